//! Graceful shutdown in process (contract §6, "SIGTERM/SIGINT"): a request
//! in flight is answered, then no new connection is accepted. The real
//! signal on the built binary is in `binary.rs`.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use stand_ins::{Fault, FaultRule};

use crate::helpers::*;

const USER: &str = "user_shutdown";

#[tokio::test]
async fn a_request_in_flight_completes_when_the_service_stops_and_new_connections_are_refused() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);
    app.bdd.inject(
        FaultRule::new(Fault::Delay(Duration::from_millis(500)))
            .method(Method::GET)
            .path_prefix("/api/images"),
    );
    let client = app.client.clone();
    let url = format!("{}/api/images", app.address);
    let host = app.host().to_owned();
    let in_flight = tokio::spawn(async move { client.get(url).bearer_auth(token).send().await });
    wait_until("the request to reach the BDD", || {
        !app.bdd_calls().is_empty()
    })
    .await;

    // Act
    let stopping = tokio::time::timeout(Duration::from_secs(3), app.stop()).await;

    // Assert
    assert!(stopping.is_ok(), "stop did not finish");
    let response = in_flight
        .await
        .expect("request task")
        .expect("the request in flight got an answer");
    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    assert_eq!(body["success"], json!(true), "{body}");
    assert!(
        tokio::net::TcpStream::connect(&host).await.is_err(),
        "still accepting connections after stop"
    );
}
