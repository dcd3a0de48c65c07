//! Many instances on one real Redis (contract §8): three built binaries
//! share the stand-ins and a `redis-server`; the rate limit holds in total,
//! idempotency keys and cleanups are shared, and a Redis outage is survived.
//!
//! A test binary of its own, its tests one at a time: each runs three
//! service processes and a Redis.

use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use stand_ins::{Fault, FaultRule};

#[path = "../common/mod.rs"]
mod common;
#[path = "../api/helpers.rs"]
mod helpers;
#[path = "../common/redis.rs"]
mod redis_server;

use helpers::*;
use redis_server::RedisServer;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Instances of the built binary on one Redis and one set of stand-ins.
struct Cluster {
    stand_ins: TestApp,
    redis: RedisServer,
    instances: Vec<(tokio::process::Child, String)>,
    client: reqwest::Client,
}

impl Cluster {
    async fn start(count: usize, env: &[(&str, &str)]) -> Self {
        let stand_ins = spawn_app().await;
        let redis = RedisServer::start();
        let url = redis.url();
        let mut all_env = vec![("REDIS_URL", url.as_str()), ("LOG_LEVEL", "warn")];
        all_env.extend_from_slice(env);
        let mut instances = Vec::new();
        for i in 0..count {
            instances.push(
                start_binary(&stand_ins, &format!("multi-{i}"), Stdio::null(), &all_env).await,
            );
        }
        Self {
            stand_ins,
            redis,
            instances,
            client: reqwest::Client::new(),
        }
    }

    fn base(&self, i: usize) -> &str {
        &self.instances[i % self.instances.len()].1
    }

    fn request(
        &self,
        i: usize,
        method: Method,
        path: &str,
        token: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base(i)))
            .bearer_auth(token)
    }

    async fn keyed_create(
        &self,
        i: usize,
        token: &str,
        key: &str,
        body: &Value,
    ) -> reqwest::Response {
        self.request(i, Method::POST, "/api/images", token)
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .expect("sent")
    }

    async fn metric(&self, i: usize, series: &str) -> f64 {
        let scrape = self
            .client
            .get(format!("{}/metrics", self.base(i)))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_in(&scrape, series).unwrap_or(0.0)
    }
}

fn body() -> Value {
    json!({"prompt": "a fox", "imageData": png_base64(256)})
}

async fn eventually(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_rate_limit_holds_in_total_across_three_instances() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Arrange
    let cluster = Cluster::start(3, &[("RATE_LIMIT_PER_MINUTE", "30")]).await;
    let token = cluster.stand_ins.token("user_limited");

    // Act: 90 requests, spread over the three instances.
    let mut statuses = Vec::new();
    let mut retry_afters = Vec::new();
    for i in 0..90 {
        let answer = cluster
            .request(i, Method::GET, "/api/images", &token)
            .send()
            .await
            .unwrap();
        statuses.push(answer.status().as_u16());
        if answer.status() == 429 {
            retry_afters.push(header(&answer, "retry-after"));
        }
    }

    // Assert
    let passed = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    println!("rate limit over 3 instances: {passed} passed, {limited} limited");
    assert_eq!((passed, limited), (30, 60), "{statuses:?}");
    assert!(retry_afters.iter().all(|r| r
        .as_deref()
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|s| s >= 1)));
    let other = cluster.stand_ins.token("user_other");
    let answer = cluster
        .request(1, Method::GET, "/api/images", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "per user");
}

#[tokio::test]
async fn a_keyed_create_is_replayed_by_the_two_other_instances() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(3, &[]).await;
    let token = cluster.stand_ins.token("user_keyed");

    let first = cluster
        .keyed_create(0, &token, "multi-key-1", &body())
        .await;
    assert_eq!(first.status(), 201);
    let first = first.bytes().await.unwrap();
    for i in [1, 2] {
        let again = cluster
            .keyed_create(i, &token, "multi-key-1", &body())
            .await;
        assert_eq!(again.status(), 201, "instance {i}");
        assert_eq!(
            header(&again, "idempotent-replayed").as_deref(),
            Some("true")
        );
        assert_eq!(
            again.bytes().await.unwrap(),
            first,
            "instance {i}: byte for byte"
        );
    }
    assert_eq!(cluster.stand_ins.bdd.records().len(), 1);
    assert_eq!(cluster.stand_ins.objects().len(), 1);
}

#[tokio::test]
async fn one_key_sent_to_two_instances_at_once_makes_one_image() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Arrange: the BDD answers slowly.
    let cluster = Cluster::start(2, &[]).await;
    cluster
        .stand_ins
        .bdd
        .inject(FaultRule::new(Fault::Delay(Duration::from_millis(800))).method(Method::POST));
    let token = cluster.stand_ins.token("user_race");
    let body = body();

    // Act
    let (a, b) = tokio::join!(
        cluster.keyed_create(0, &token, "race-key", &body),
        cluster.keyed_create(1, &token, "race-key", &body),
    );

    // Assert
    let mut statuses = vec![a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, vec![201, 409]);
    assert_eq!(cluster.stand_ins.bdd.records().len(), 1);
    assert_eq!(cluster.stand_ins.objects().len(), 1);
}

#[tokio::test]
async fn cleanups_queued_by_an_instance_killed_with_sigkill_are_finished_by_another() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Arrange: short timeouts, so the cleanup lease is short; instance 0's
    // create fails at the record (nothing written) and Storage refuses the
    // removals for now: the object waits in the shared queue.
    let mut cluster = Cluster::start(
        2,
        &[("UPSTREAM_TIMEOUT_MS", "300"), ("UPLOAD_TIMEOUT_MS", "300")],
    )
    .await;
    cluster.stand_ins.bdd.inject(
        FaultRule::new(Fault::Status(400))
            .method(Method::POST)
            .times(1),
    );
    cluster
        .stand_ins
        .storage
        .inject(FaultRule::new(Fault::Status(500)).method(Method::DELETE));
    let token = cluster.stand_ins.token("user_orphan");
    let answer = cluster
        .request(0, Method::POST, "/api/images", &token)
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert_eq!(cluster.stand_ins.objects().len(), 1);
    assert!(cluster.metric(0, "cleanup_pending").await >= 1.0);

    // Act: instance 0 dies; Storage recovers.
    let (mut dead, _) = cluster.instances.remove(0);
    dead.start_kill().expect("SIGKILL");
    let _ = dead.wait().await;
    cluster.stand_ins.storage.clear_faults();

    // Assert: the other instance removes it.
    eventually(
        "another instance finishes the cleanup",
        Duration::from_secs(12),
        || cluster.stand_ins.objects().is_empty(),
    )
    .await;
    assert!(cluster.metric(0, "cleanup_total{result=\"removed\"}").await >= 1.0);
}

#[tokio::test]
async fn while_redis_is_down_instances_keep_serving_as_the_contract_says_and_recover_alone() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Arrange
    let mut cluster = Cluster::start(2, &[("RATE_LIMIT_PER_MINUTE", "100")]).await;
    let token = cluster.stand_ins.token("user_outage");

    // Act: Redis goes away for a few seconds.
    cluster.redis.stop();
    let list = cluster
        .request(0, Method::GET, "/api/images", &token)
        .send()
        .await
        .unwrap();
    let plain = cluster
        .request(1, Method::POST, "/api/images", &token)
        .json(&body())
        .send()
        .await
        .unwrap();
    let keyed = cluster.keyed_create(0, &token, "outage-key", &body()).await;
    let ready = cluster
        .client
        .get(format!("{}/api/ready", cluster.base(1)))
        .send()
        .await
        .unwrap();
    let health = cluster
        .client
        .get(format!("{}/api/health", cluster.base(0)))
        .send()
        .await
        .unwrap();

    // Assert: served, limited nothing, refused only the keyed create.
    assert_eq!(list.status(), 200, "the rate limit lets requests through");
    assert_eq!(
        plain.status(),
        201,
        "creates without a key are not affected"
    );
    assert_eq!(keyed.status(), 503);
    assert_eq!(
        keyed.json::<Value>().await.unwrap(),
        json!({"success": false, "error": "Service de coordination indisponible"})
    );
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<Value>().await.unwrap()["checks"]["redis"],
        "unreachable"
    );
    assert_eq!(health.status(), 200);
    assert!(cluster.metric(0, "redis_errors_total").await >= 1.0);

    // Act: Redis is back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.redis.restart();

    // Assert: every instance recovers by itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = cluster
            .client
            .get(format!("{}/api/ready", cluster.base(0)))
            .send()
            .await
            .unwrap();
        if ready.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready again after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..2 {
        let keyed = cluster
            .keyed_create(i, &token, &format!("after-{i}"), &body())
            .await;
        assert_eq!(keyed.status(), 201, "instance {i}");
    }
}
