//! The local Storage against the real server's measured answers
//! (`tests/fixtures/`): the 38 probes replayed, the list API's table, signed
//! URLs, the gateway's CORS, and what else a client of the real server uses.

use std::collections::HashMap;

use base64::Engine;
use md5::{Digest, Md5};
use reqwest::Method;
use serde_json::{json, Value};
use stand_ins::storage::{api_key, LOCAL_ANON_KEY, LOCAL_SERVICE_ROLE_KEY};
use stand_ins::{StorageOptions, StorageStandIn};

/// The repository's fixtures folder.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

/// A 70-byte PNG (1x1), the size the probes uploaded.
const PNG_70: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

/// The MD5 of the probes' own 70-byte PNG, as their etags show it.
const REAL_PNG_MD5: &str = "f7aea610f242d41dbb9b736a5fc8336d";

/// Headers compared on every probe: those the real server's answers are
/// known to carry (their values normalised where they name a time).
const COMPARED_HEADERS: [&str; 8] = [
    "content-type",
    "content-length",
    "etag",
    "last-modified",
    "accept-ranges",
    "x-robots-tag",
    "cache-control",
    "content-range",
];

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}"))
        .unwrap_or_else(|e| panic!("tests/fixtures/{name}: {e}"))
}

fn png() -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(PNG_70)
        .expect("PNG")
}

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn stand_in() -> StorageStandIn {
    StorageStandIn::start(StorageOptions::new(LOCAL_SERVICE_ROLE_KEY))
        .await
        .expect("storage stand-in")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Replaces what differs from run to run by placeholders: UUIDs numbered in
/// order of first appearance (so "same id as before" still shows), ISO and
/// HTTP times, and the probes' PNG digest by ours.
struct Normaliser {
    uuids: HashMap<String, usize>,
    png_md5: String,
}

impl Normaliser {
    fn new() -> Self {
        Self {
            uuids: HashMap::new(),
            png_md5: md5_hex(&png()),
        }
    }

    fn text(&mut self, s: &str) -> String {
        if is_uuid(s) {
            let next = self.uuids.len();
            let n = *self.uuids.entry(s.to_owned()).or_insert(next);
            return format!("<uuid-{n}>");
        }
        if chrono::DateTime::parse_from_rfc3339(s).is_ok() {
            return "<time>".into();
        }
        if chrono::DateTime::parse_from_rfc2822(s).is_ok() {
            return "<http-date>".into();
        }
        s.replace(REAL_PNG_MD5, &self.png_md5)
    }

    fn value(&mut self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.text(s)),
            Value::Array(items) => Value::Array(items.iter().map(|i| self.value(i)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.value(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid_like(s)
}

fn uuid_like(s: &str) -> bool {
    s.chars().enumerate().all(|(i, c)| match i {
        8 | 13 | 18 | 23 => c == '-',
        _ => c.is_ascii_hexdigit(),
    })
}

/// The key a probe sent where the fixture keeps only a placeholder or the
/// first 40 characters of a JWT.
fn key_for(probe: &str, sent: &str) -> String {
    let token = sent.strip_prefix("Bearer ").unwrap_or(sent);
    let key = if token == "<key>" {
        LOCAL_SERVICE_ROLE_KEY.to_owned()
    } else if token.starts_with("eyJ") && token.matches('.').count() < 2 {
        match probe {
            // A JWT the server's secret did not sign.
            "upload-wrong-key-jwt-other-secret" => {
                api_key("not-this-projects-secret-at-least-32-chars", "service_role")
            }
            // The project's anon key: valid, but no policy lets it write.
            "upload-anon-jwt-no-rls-policy" => LOCAL_ANON_KEY.to_owned(),
            other => panic!("probe {other}: a truncated JWT with no known stand-in"),
        }
    } else {
        token.to_owned()
    };
    if sent.starts_with("Bearer ") {
        format!("Bearer {key}")
    } else {
        key
    }
}

/// The body a probe sent: JSON as recorded, or bytes of the recorded size.
fn body_for(body: &Value) -> Vec<u8> {
    match body {
        Value::Null => Vec::new(),
        b if b.get("json").is_some() => b["json"].to_string().into_bytes(),
        b => match b["size"].as_u64().expect("a body size") {
            70 => png(),
            // "Not JSON" with a JSON content type.
            8 => b"not json".to_vec(),
            n => vec![0; usize::try_from(n).expect("size")],
        },
    }
}

#[tokio::test]
async fn the_stand_in_answers_the_38_probes_as_the_real_server_did() {
    // Arrange
    let real: Value = serde_json::from_str(&fixture("storage-real-answers.json")).expect("JSON");
    let probes = real["results"].as_array().expect("results");
    assert_eq!(probes.len(), 38, "the fixture holds 38 probes");
    let storage = stand_in().await;
    let http = client();
    let (mut theirs, mut ours) = (Normaliser::new(), Normaliser::new());
    let mut differences = Vec::new();

    for probe in probes {
        let name = probe["name"].as_str().expect("name");
        let request = &probe["request"];
        let method = Method::from_bytes(request["method"].as_str().unwrap().as_bytes()).unwrap();
        let mut call = http.request(
            method.clone(),
            format!("{}{}", storage.url(), request["path"].as_str().unwrap()),
        );
        for (header, value) in request["headers"].as_object().unwrap() {
            let value = value.as_str().unwrap();
            let value = match header.to_ascii_lowercase().as_str() {
                "authorization" if value == "<key>" => format!("Bearer {LOCAL_SERVICE_ROLE_KEY}"),
                "authorization" | "apikey" => key_for(name, value),
                // A revalidation names the etag of the bytes sent: ours.
                _ => value.replace(REAL_PNG_MD5, &md5_hex(&png())),
            };
            call = call.header(header.as_str(), value);
        }
        let sent = body_for(&request["body"]);

        // Act
        let response = call.body(sent.clone()).send().await.expect("answer");

        // Assert
        let mut differ = |what: String| differences.push(format!("{name}: {what}"));
        let status = response.status().as_u16();
        if Some(u64::from(status)) != probe["status"].as_u64() {
            differ(format!("status {status}, real {}", probe["status"]));
        }
        let headers = response.headers().clone();
        if headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok())
            != Some("*")
        {
            differ("no `access-control-allow-origin: *` (the gateway's CORS)".into());
        }
        for header in COMPARED_HEADERS {
            let real = probe["headers"][header].as_str().map(|v| theirs.text(v));
            let got = headers
                .get(header)
                .and_then(|v| v.to_str().ok())
                .map(|v| ours.text(v));
            if real != got {
                differ(format!("header {header}: {got:?}, real {real:?}"));
            }
        }
        let bytes = response.bytes().await.expect("body");
        match &probe["body"] {
            Value::Null => {
                if !bytes.is_empty() {
                    differ(format!("{} body bytes, real none", bytes.len()));
                }
            }
            b if b.get("json").is_some() => {
                let got: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let (real, got) = (theirs.value(&b["json"]), ours.value(&got));
                if real != got {
                    differ(format!("body\n   ours {got}\n   real {real}"));
                }
            }
            b => {
                let size = b["size"].as_u64().unwrap_or(0) as usize;
                if bytes.len() != size || bytes[..] != png()[..size.min(70)] {
                    differ(format!("{} bytes, real {size} of the upload", bytes.len()));
                }
            }
        }
    }

    assert!(
        differences.is_empty(),
        "{} differences from the real server:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

// ------------------------------------------------------------------ list

/// Calls the list API with `body` (its JSON text).
async fn list(storage: &StorageStandIn, bucket: &str, key: &str, body: &str) -> (u16, Value) {
    let response = client()
        .post(format!("{}/storage/v1/object/list/{bucket}", storage.url()))
        .bearer_auth(key)
        .header("apikey", key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("answer");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

fn names(answer: &Value) -> Vec<&str> {
    answer
        .as_array()
        .expect("an array")
        .iter()
        .map(|e| e["name"].as_str().expect("a name"))
        .collect()
}

#[tokio::test]
async fn the_list_api_answers_storage_list_md_row_by_row() {
    // Arrange: the objects the measurement stored, 3 bytes each
    let table = fixture("storage-list.md");
    let storage = stand_in().await;
    for path in [
        "user_a/1_generated_x.png",
        "user_a/2_generated_y.png",
        "user_b/3_generated_z.png",
        "user_a/sub/4.png",
    ] {
        storage.put_object("images", path, &b"abc"[..], "image/png");
    }
    let key = LOCAL_SERVICE_ROLE_KEY;
    let asc = r#"{"column":"name","order":"asc"}"#;
    let rows: [(&str, &str, &str, u16, Vec<&str>); 7] = [
        (
            "images",
            key,
            r#"{"prefix":"","limit":100,"offset":0,"sortBy":{"column":"name","order":"asc"}}"#,
            200,
            vec!["user_a", "user_b"],
        ),
        (
            "images",
            key,
            r#"{"prefix":"user_a/", …same}"#,
            200,
            vec!["1_generated_x.png", "2_generated_y.png", "sub"],
        ),
        (
            "images",
            key,
            r#"{"prefix":"user_a","limit":1,"offset":1}"#,
            200,
            vec!["2_generated_y.png"],
        ),
        (
            "images",
            key,
            r#"{"prefix":"user_a/"}"#,
            200,
            vec!["1_generated_x.png", "2_generated_y.png", "sub"],
        ),
        (
            "images",
            key,
            r#"{"prefix":"user_a/","limit":1,"sortBy":{"column":"name","order":"desc"}}"#,
            200,
            vec!["sub"],
        ),
        ("no-such-bucket", key, r#"{"prefix":""}"#, 200, vec![]),
        ("images", key, r#"{}"#, 400, vec![]),
    ];

    for (bucket, key, body, status, expected) in rows {
        assert!(
            table.contains(&format!("`{body}`")),
            "storage-list.md has no row for {body}"
        );
        let sent = body.replace(
            ", …same}",
            &format!(r#","limit":100,"offset":0,"sortBy":{asc}}}"#),
        );

        // Act
        let (got_status, answer) = list(&storage, bucket, key, &sent).await;

        // Assert
        assert_eq!(got_status, status, "{body}: {answer}");
        if status == 200 {
            assert_eq!(names(&answer), expected, "{body}");
        }
    }

    // Assert: entry shapes, folder rows, the two refusals
    let (_, answer) = list(&storage, "images", key, r#"{"prefix":"user_a/"}"#).await;
    let file = &answer[0];
    assert!(is_uuid(file["id"].as_str().unwrap()), "{file}");
    for time in ["updated_at", "created_at", "last_accessed_at"] {
        let t = file[time].as_str().unwrap();
        assert!(t.ends_with('Z') && t.len() == 24, "{time}: {t}");
    }
    let metadata = &file["metadata"];
    assert_eq!(
        metadata,
        &json!({
            "eTag": format!("\"{}\"", md5_hex(b"abc")),
            "size": 3,
            "mimetype": "image/png",
            "cacheControl": "no-cache",
            "lastModified": metadata["lastModified"],
            "contentLength": 3,
            "httpStatusCode": 200,
        })
    );
    assert_eq!(
        answer[2],
        json!({"name": "sub", "id": null, "updated_at": null, "created_at": null,
               "last_accessed_at": null, "metadata": null})
    );
    let (_, refused) = list(&storage, "images", key, "{}").await;
    assert_eq!(
        refused,
        json!({"statusCode": "400", "error": "Error",
               "message": "body must have required property 'prefix'", "code": "InvalidRequest"})
    );
    let (status, refused) = list(&storage, "images", "wrong-key", r#"{"prefix":""}"#).await;
    assert_eq!(status, 400);
    assert_eq!(
        refused,
        json!({"statusCode": "403", "error": "Unauthorized",
               "message": "Invalid Compact JWS", "code": "AccessDenied"})
    );
}

#[tokio::test]
async fn listing_pages_with_offset_and_sorts_by_the_times_seeded() {
    // Arrange: three objects created a day apart, out of name order
    let storage = stand_in().await;
    let day = chrono::Duration::days(1);
    let now = chrono::Utc::now();
    storage.put_object_at("images", "u/b.png", &b"1"[..], "image/png", now - day * 3);
    storage.put_object_at("images", "u/a.png", &b"2"[..], "image/png", now - day);
    storage.put_object_at("images", "u/c.png", &b"3"[..], "image/png", now - day * 2);
    storage.put_object("images", "u/later/d.png", &b"4"[..], "image/png");
    let key = LOCAL_SERVICE_ROLE_KEY;

    // Act: pages of two, by name
    let mut seen = Vec::new();
    for offset in (0..).step_by(2) {
        let body = format!(r#"{{"prefix":"u/","limit":2,"offset":{offset}}}"#);
        let (_, page) = list(&storage, "images", key, &body).await;
        let page: Vec<String> = names(&page).into_iter().map(str::to_owned).collect();
        let done = page.len() < 2;
        seen.extend(page);
        if done {
            break;
        }
    }
    let (_, by_creation) = list(
        &storage,
        "images",
        key,
        r#"{"prefix":"u/","sortBy":{"column":"created_at","order":"asc"}}"#,
    )
    .await;

    // Assert
    assert_eq!(seen, ["a.png", "b.png", "c.png", "later"]);
    assert_eq!(
        names(&by_creation),
        ["later", "b.png", "c.png", "a.png"],
        "folders first, then by creation time"
    );
    let created = storage.object_info("images", "u/b.png").unwrap().created_at;
    assert_eq!(
        by_creation[1]["created_at"],
        created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
}

// ------------------------------------------------------------------ signed URLs

async fn sign(storage: &StorageStandIn, path: &str, body: Value) -> (u16, Value) {
    let response = client()
        .post(format!(
            "{}/storage/v1/object/sign/images/{path}",
            storage.url()
        ))
        .bearer_auth(LOCAL_SERVICE_ROLE_KEY)
        .json(&body)
        .send()
        .await
        .expect("answer");
    (
        response.status().as_u16(),
        response.json().await.expect("JSON"),
    )
}

#[tokio::test]
async fn a_signed_url_serves_the_object_until_it_expires_and_only_that_object() {
    // Arrange
    let storage = stand_in().await;
    storage.put_object("images", "u/a.png", png(), "image/png");
    storage.put_object("images", "u/b.png", &b"other"[..], "image/png");

    // Act
    let (status, signed) = sign(&storage, "u/a.png", json!({"expiresIn": 60})).await;
    let url = signed["signedURL"].as_str().expect("signedURL").to_owned();
    let fetched = client()
        .get(format!("{}/storage/v1{url}", storage.url()))
        .send()
        .await
        .unwrap();

    // Assert: the documented shape, the token's claims, the bytes
    assert_eq!(status, 200);
    let token = url
        .strip_prefix("/object/sign/images/u/a.png?token=")
        .expect("relative to /storage/v1");
    let parts: Vec<&str> = token.split('.').collect();
    let decode = |p: &str| -> Value {
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(decode(parts[0]), json!({"alg": "HS256"}));
    let claims = decode(parts[1]);
    assert_eq!(claims["url"], "images/u/a.png");
    assert_eq!(claims["scope"], "download");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        60
    );
    assert_eq!(fetched.status(), 200);
    assert!(fetched.headers().get("expires").is_some());
    assert!(fetched.headers().get("cache-control").is_none());
    assert_eq!(fetched.bytes().await.unwrap(), png());

    // Act + Assert: the same token for another object, a tampered one, none, a missing object
    let base = format!("{}/storage/v1/object/sign/images", storage.url());
    let cases = [
        (
            format!("{base}/u/b.png?token={token}"),
            json!({"statusCode": "400", "error": "InvalidSignature", "message": "Invalid signature", "code": "InvalidSignature"}),
        ),
        (
            format!("{base}/u/a.png?token={token}x"),
            json!({"statusCode": "400", "error": "InvalidJWT", "message": "signature verification failed", "code": "InvalidJWT"}),
        ),
        (
            format!("{base}/u/a.png"),
            json!({"statusCode": "400", "error": "Error", "message": "querystring must have required property 'token'", "code": "InvalidRequest"}),
        ),
    ];
    for (url, expected) in cases {
        let response = client().get(&url).send().await.unwrap();
        assert_eq!(response.status(), 400, "{url}");
        assert_eq!(response.json::<Value>().await.unwrap(), expected, "{url}");
    }
    let (status, missing) = sign(&storage, "u/nope.png", json!({"expiresIn": 60})).await;
    assert_eq!((status, missing["code"].as_str()), (400, Some("NoSuchKey")));
    let (status, bad) = sign(&storage, "u/a.png", json!({})).await;
    assert_eq!(status, 400);
    assert_eq!(
        bad["message"],
        "body must have required property 'expiresIn'"
    );
}

// ------------------------------------------------------------------ CORS and browsers

#[tokio::test]
async fn the_gateway_answers_preflights_and_lets_any_origin_read() {
    // Arrange
    let storage = stand_in().await;
    storage.put_object("images", "u/a.png", png(), "image/png");

    // Act
    let preflight = client()
        .request(
            Method::OPTIONS,
            format!("{}/storage/v1/object/images/u/b.png", storage.url()),
        )
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,x-upsert")
        .send()
        .await
        .unwrap();
    let read = client()
        .get(storage.public_url("images", "u/a.png"))
        .header("origin", "http://elsewhere.test")
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(preflight.status(), 200);
    let header =
        |r: &reqwest::Response, h: &str| r.headers().get(h).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        header(&preflight, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert_eq!(
        header(&preflight, "access-control-allow-headers").as_deref(),
        Some("authorization,x-upsert")
    );
    assert!(header(&preflight, "access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert!(
        storage
            .requests()
            .iter()
            .all(|r| r.method != Method::OPTIONS),
        "the gateway answers preflights itself"
    );
    assert_eq!(
        header(&read, "access-control-allow-origin").as_deref(),
        Some("*")
    );
}

#[tokio::test]
async fn a_browser_form_upload_is_stored_with_its_part_type_and_cache_time() {
    // Arrange: what storage-js sends for a `File` or `Blob`
    let storage = stand_in().await;
    let mut form = b"--XyZ\r\nContent-Disposition: form-data; name=\"cacheControl\"\r\n\r\n3600\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"\"; filename=\"blob\"\r\nContent-Type: image/png\r\n\r\n"
        .to_vec();
    form.extend(png());
    form.extend(b"\r\n--XyZ--\r\n");

    // Act
    let response = client()
        .post(format!(
            "{}/storage/v1/object/images/u/form.png",
            storage.url()
        ))
        .bearer_auth(LOCAL_SERVICE_ROLE_KEY)
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .header("x-upsert", "false")
        .body(form)
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.status(), 200);
    let (bytes, content_type) = storage.object("images", "u/form.png").unwrap();
    assert_eq!(
        (bytes.to_vec(), content_type.as_str()),
        (png(), "image/png")
    );
    assert_eq!(
        storage
            .object_info("images", "u/form.png")
            .unwrap()
            .cache_control,
        "max-age=3600"
    );
}

// ------------------------------------------------------------------ buckets, keys, disk

#[tokio::test]
async fn buckets_created_through_the_api_and_upserted_ids_survive_a_restart() {
    // Arrange
    let dir = std::env::temp_dir().join(format!(
        "stand-ins-storage-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
    ));
    let mut options = StorageOptions::new(LOCAL_SERVICE_ROLE_KEY);
    options.data_dir = Some(dir.clone());
    let storage = StorageStandIn::start(options.clone()).await.unwrap();
    let http = client();
    let created = http
        .post(format!("{}/storage/v1/bucket", storage.url()))
        .bearer_auth(LOCAL_SERVICE_ROLE_KEY)
        .json(&json!({"name": "avatars", "public": false}))
        .send()
        .await
        .unwrap();
    let upload = |upsert: &'static str| {
        http.post(format!(
            "{}/storage/v1/object/avatars/me.png",
            storage.url()
        ))
        .bearer_auth(LOCAL_SERVICE_ROLE_KEY)
        .header("content-type", "image/png")
        .header("x-upsert", upsert)
        .body(png())
        .send()
    };
    let first: Value = upload("false").await.unwrap().json().await.unwrap();
    let second: Value = upload("true").await.unwrap().json().await.unwrap();

    // Act
    drop(storage);
    let storage = StorageStandIn::start(options).await.unwrap();
    let bucket: Value = http
        .get(format!("{}/storage/v1/bucket/avatars", storage.url()))
        .bearer_auth(LOCAL_SERVICE_ROLE_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let private = http
        .get(storage.public_url("avatars", "me.png"))
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(
        created.json::<Value>().await.unwrap(),
        json!({"name": "avatars"})
    );
    assert_eq!(first["Id"], second["Id"], "an upsert keeps the id");
    assert_eq!(
        storage
            .object_info("avatars", "me.png")
            .map(|o| json!(o.id)),
        Some(first["Id"].clone())
    );
    assert_eq!(bucket["public"], false);
    assert_eq!(bucket["file_size_limit"], Value::Null);
    assert_eq!(
        private.status(),
        400,
        "a private bucket has no public files"
    );
    assert_eq!(
        private.json::<Value>().await.unwrap()["code"],
        "NoSuchBucket"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_anon_key_reads_public_files_and_nothing_else() {
    // Arrange
    let storage = stand_in().await;
    storage.put_object("images", "u/a.png", png(), "image/png");
    let http = client();
    let with_anon = |method: Method, path: &str| {
        http.request(method, format!("{}/storage/v1{path}", storage.url()))
            .bearer_auth(LOCAL_ANON_KEY)
            .header("apikey", LOCAL_ANON_KEY)
    };

    // Act
    let public = with_anon(Method::GET, "/object/public/images/u/a.png")
        .send()
        .await
        .unwrap();
    let removed: Value = with_anon(Method::DELETE, "/object/images")
        .json(&json!({"prefixes": ["u/a.png"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let buckets: Value = with_anon(Method::GET, "/bucket")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    // Assert
    assert_eq!(public.status(), 200);
    assert_eq!(removed, json!([]), "row-level security hides the row");
    assert_eq!(buckets, json!([]));
    assert!(storage.object("images", "u/a.png").is_some());
}

// ------------------------------------------------------------------ storage-js

/// The repository root.
fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test]
#[ignore = "needs Node.js and `npm ci --prefix tests/storagejs`; CI runs it (.ci/run)"]
async fn storage_js_gets_from_the_stand_in_what_it_got_from_the_real_server() {
    // Arrange
    let root = repo_root();
    let script = root.join("tests/storagejs/run.mjs");
    assert!(
        root.join("tests/storagejs/node_modules/@supabase/storage-js").is_dir(),
        "tests/storagejs/node_modules is missing: run `npm ci --prefix tests/storagejs` (Node.js 18 or later)"
    );
    let storage = stand_in().await;

    // Act
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .arg(storage.url())
        .arg(LOCAL_SERVICE_ROLE_KEY)
        .current_dir(&root)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run `node` (install Node.js 18 or later): {e}"));

    // Assert
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "storage-js met a Storage unlike the real one:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("operations match"), "{stdout}\n{stderr}");
}
