//! The dev stack in a real browser: headless Chromium runs a frontend page
//! (`tests/browser/page.html`) from the allowed origin, where creating,
//! listing, reading, re-labelling and deleting an image work and the stored
//! image can be shown, fetched and drawn on an exportable canvas; and from
//! another origin, where every credentialed call is blocked by CORS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use devstack::{DevStack, DevStackOptions};
use image_service::app::App;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Serves `page` to every request on `listener`: the frontend's origin.
async fn serve_page(listener: TcpListener, page: String) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let page = page.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        });
    }
}

#[tokio::test]
#[ignore = "needs Chromium (/usr/bin/chromium or CHROMIUM) and `npm ci --prefix tests/browser`; CI runs it (.ci/run)"]
async fn a_browser_on_the_frontend_origin_uses_every_route_and_the_image_and_others_are_blocked() {
    // Arrange: what the test needs, or a clear failure
    let root = repo_root();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's `chromium` (or set CHROMIUM)"
    );
    assert!(
        root.join("tests/browser/node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run `npm ci --prefix tests/browser` (Node.js 18 or later)"
    );
    let page = std::fs::read_to_string(root.join("tests/browser/page.html")).expect("page.html");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("page port");
    let page_port = listener.local_addr().expect("addr").port();
    let page_server = tokio::spawn(serve_page(listener, page));

    // The dev stack, the frontend allowed on http://localhost:{page port}.
    let data_dir = std::env::temp_dir().join(format!(
        "image-service-browser-{}-{}",
        std::process::id(),
        page_port
    ));
    let stack = DevStack::start(&DevStackOptions::local(&data_dir))
        .await
        .expect("dev stack starts");
    let frontend = format!("http://localhost:{page_port}");
    let config = stack
        .config(|name| match name {
            "PORT" => Some("0".into()),
            "FRONTEND_URL" => Some(frontend.clone()),
            "LOG_LEVEL" => Some("warn".into()),
            _ => None,
        })
        .expect("dev stack config");
    let app = App::build(config).await.expect("app builds");
    let service = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    // Act
    let run = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/run.mjs"))
        .arg(format!("{frontend}/"))
        .arg(format!("http://127.0.0.1:{page_port}/"))
        .arg(&service)
        .arg(stack.clerk.url())
        .env("CHROMIUM", &chromium)
        .current_dir(&root)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser run finishes within 2 minutes")
        .unwrap_or_else(|e| panic!("cannot run `node` (install Node.js 18 or later): {e}"));

    // Assert
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    let _ = stop.send(());
    let _ = server.await;
    page_server.abort();
    let leftovers = stack.storage.object_paths("images");
    let _ = std::fs::remove_dir_all(&data_dir);
    assert!(
        output.status.success(),
        "the browser run failed:\n{stdout}\n{stderr}"
    );
    assert!(
        leftovers.is_empty(),
        "the deleted image is still stored: {leftovers:?}"
    );
}
