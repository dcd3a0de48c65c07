//! The API description (`openapi.json`, served at `/api/openapi.json`) and its
//! page (`/api/docs`) are kept true to the router and the contract:
//! - the served document is the file, and is OpenAPI 3.1 with every `$ref` resolving;
//! - every route of the router is documented, every documented operation is
//!   routed, and a documented path answers `405` for every other method;
//! - each operation documents exactly the statuses the contract gives it;
//! - answers provoked over HTTP (successes, 4xx, upstream 5xx) have a
//!   documented status, content type, required headers, and a body matching
//!   the documented schema (checked with the `jsonschema` crate);
//! - the page is self-contained HTML (no external host).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use stand_ins::{BddMode, Fault, FaultRule};

use crate::helpers::*;

/// The document as committed; the binary serves this very text.
const DOCUMENT: &str = include_str!("../../openapi.json");
/// The router, read to list the paths it serves.
const ROUTER_SOURCE: &str = include_str!("../../src/routes/mod.rs");
/// An id of the right shape that no record has.
const PROBE_ID: &str = "probe_id_1";
/// The methods the checks below try on every path.
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The statuses each operation can answer, read from the contract:
/// - every route: `500` (unexpected internal error, §3 common errors);
/// - `/api/ready`: `503` when a dependency fails (§3);
/// - protected routes (§2): `401`, `429` (rate limit, §3), `503` (no signing
///   keys), and, as they all call the BDD service, `502`/`503`/`504` (§4) and
///   any other BDD 4xx passed through (`4XX`, §4);
/// - `400`: query validation (list), `id` validation (by id), body validation
///   or `JSON invalide` (create, status);
/// - `404`: by id (BDD 404 passed through, or another user's record);
/// - `413`/`415`: the routes with a JSON body (create, status);
/// - `408`: the routes with a JSON body, when it is not received in time or
///   too slowly (§9);
/// - create only: `409` and `422` (`Idempotency-Key` running, or reused for
///   another body, §7; a BDD 409/422 passed through shares them), `400` also
///   for a malformed key, `429` also beyond the user's upload slots (§9),
///   `503` also for an unreachable key store (§7) or no free upload slot.
///
/// `405` belongs to no operation: it is what a documented path answers for an
/// undocumented method (checked separately), like `404` for unknown paths.
const STATUSES: [(&str, &str, &[&str]); 11] = [
    ("/api/health", "get", &["200", "500"]),
    ("/api/images/health", "get", &["200", "500"]),
    ("/api/ready", "get", &["200", "500", "503"]),
    ("/api/openapi.json", "get", &["200", "500"]),
    ("/api/docs", "get", &["200", "500"]),
    ("/metrics", "get", &["200", "500"]),
    (
        "/api/images",
        "get",
        &[
            "200", "400", "401", "429", "4XX", "500", "502", "503", "504",
        ],
    ),
    (
        "/api/images",
        "post",
        &[
            "201", "400", "401", "408", "409", "413", "415", "422", "429", "4XX", "500", "502",
            "503", "504",
        ],
    ),
    (
        "/api/images/{id}",
        "get",
        &[
            "200", "400", "401", "404", "429", "4XX", "500", "502", "503", "504",
        ],
    ),
    (
        "/api/images/{id}",
        "delete",
        &[
            "200", "400", "401", "404", "429", "4XX", "500", "502", "503", "504",
        ],
    ),
    (
        "/api/images/{id}/status",
        "patch",
        &[
            "200", "400", "401", "404", "408", "413", "415", "429", "4XX", "500", "502", "503",
            "504",
        ],
    ),
];

// ---------------------------------------------------------------- helpers

fn document() -> Value {
    serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
}

/// `(path template, method)` of every documented operation.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                ops.push((path.clone(), method.to_owned()));
            }
        }
    }
    ops
}

/// A concrete path for a template.
fn concrete(path: &str) -> String {
    path.replace("{id}", PROBE_ID)
}

fn method_of(name: &str) -> Method {
    Method::from_bytes(name.to_ascii_uppercase().as_bytes()).expect("a method")
}

/// The target of a local `$ref` (`#/components/…`).
fn pointer<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let path = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("only local $refs: {reference}"));
    doc.pointer(path)
        .unwrap_or_else(|| panic!("$ref {reference} resolves to nothing"))
}

/// Follows `$ref`s until a concrete object.
fn resolve<'a>(doc: &'a Value, mut value: &'a Value) -> &'a Value {
    while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
        value = pointer(doc, reference);
    }
    value
}

/// `type/subtype` in lower case, without parameters.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// `name=value` parameters of a media type, lower-cased.
fn media_params(content_type: &str) -> BTreeSet<String> {
    content_type
        .split(';')
        .skip(1)
        .map(|p| p.trim().to_ascii_lowercase().replace(' ', ""))
        .filter(|p| !p.is_empty())
        .collect()
}

// ------------------------------------------------------ schema validation

/// Asserts `value` matches `schema`, one of `doc`'s schemas.
///
/// The document's schemas point at each other with `$ref:
/// "#/components/schemas/…"`, so `schema` is validated as part of a root
/// that carries the document's components: each reference then resolves to
/// what it names in the document, and a reference to nothing fails the build
/// loudly. Draft 2020-12 is OpenAPI 3.1's dialect; `format` is checked too
/// (the draft leaves it an annotation by default).
fn assert_valid(doc: &Value, schema: &Value, value: &Value, context: &str) {
    let root = json!({"allOf": [schema], "components": doc["components"]});
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("{context}: the schema does not build: {e}\n{schema}"));
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("at {:?}: {e}", e.instance_path().as_str()))
        .collect();
    assert!(
        errors.is_empty(),
        "{context}: {value} does not match its schema:\n{}",
        errors.join("\n")
    );
}

// ------------------------------------------------ conformance of an answer

/// The statuses provoked so far, by operation.
#[derive(Default)]
struct Seen(BTreeMap<(String, String), BTreeSet<u16>>);

impl Seen {
    /// Asserts `response` is documented for `method path` (status, content
    /// type, required headers, body schema), records its status, returns its body.
    async fn check(
        &mut self,
        doc: &Value,
        path: &str,
        method: &str,
        response: reqwest::Response,
    ) -> Value {
        let status = response.status().as_u16();
        let context = format!("{} {path} answered {status}", method.to_uppercase());
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{context}: operation not documented");
        let responses = operation["responses"].as_object().expect("responses");
        let key = [status.to_string(), format!("{}XX", status / 100)]
            .into_iter()
            .find(|k| responses.contains_key(k))
            .unwrap_or_else(|| panic!("{context}: status not documented"));
        let documented = resolve(doc, &responses[&key]);

        for (name, header) in documented["headers"].as_object().into_iter().flatten() {
            let header = resolve(doc, header);
            let got = response
                .headers()
                .get(name.as_str())
                .map(|v| v.to_str().expect("ASCII header").to_owned());
            match got {
                Some(text) => {
                    let schema = &header["schema"];
                    let value = if resolve(doc, schema)["type"] == "integer" {
                        text.parse::<i64>().map_or(Value::String(text), Value::from)
                    } else {
                        Value::String(text)
                    };
                    assert_valid(doc, schema, &value, &format!("{context}: header {name}"));
                }
                None => assert!(
                    header["required"] != true,
                    "{context}: required header {name} missing"
                ),
            }
        }

        let content_type = header(&response, "content-type").unwrap_or_default();
        let text = response.text().await.expect("a body");
        let Some(content) = documented["content"].as_object() else {
            assert!(text.is_empty(), "{context}: undocumented body {text}");
            self.record(path, method, status);
            return Value::Null;
        };
        let (media_type, media) = content
            .iter()
            .find(|(documented, _)| {
                essence(documented) == essence(&content_type)
                    && media_params(documented).is_subset(&media_params(&content_type))
            })
            .unwrap_or_else(|| {
                panic!(
                    "{context}: content type {content_type:?} not among {:?}",
                    content.keys().collect::<Vec<_>>()
                )
            });
        let body = if essence(media_type) == "application/json" {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{context}: not JSON ({e}): {text}"))
        } else {
            Value::String(text)
        };
        assert_valid(doc, &media["schema"], &body, &context);
        self.record(path, method, status);
        body
    }

    fn record(&mut self, path: &str, method: &str, status: u16) {
        self.0
            .entry((path.to_owned(), method.to_owned()))
            .or_default()
            .insert(status);
    }

    fn statuses(&self) -> BTreeSet<u16> {
        self.0.values().flatten().copied().collect()
    }
}

/// A create body with a PNG of `size` bytes.
fn png_body(size: usize) -> Value {
    json!({"prompt": "a cat", "imageData": png_base64(size), "metadata": {"seed": 1}})
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn the_served_document_is_the_file_and_is_openapi_3_1_with_every_ref_resolving() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app
        .request(Method::GET, "/api/openapi.json")
        .send()
        .await
        .expect("sent");

    // Assert
    assert_eq!(response.status(), 200);
    let text = {
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert_eq!(content_type, "application/json; charset=utf-8");
        response.text().await.expect("body")
    };
    assert_eq!(text, DOCUMENT, "the served document is the file");
    let doc: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    fn walk(doc: &Value, value: &Value, refs: &mut usize) {
        match value {
            Value::Object(map) => {
                if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
                    pointer(doc, reference);
                    *refs += 1;
                }
                map.values().for_each(|v| walk(doc, v, refs));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(doc, v, refs)),
            _ => {}
        }
    }
    let mut refs = 0;
    walk(&doc, &doc, &mut refs);
    assert!(refs > 50, "only {refs} $refs");
    let schemes = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(schemes["type"], "http");
    assert_eq!(schemes["scheme"], "bearer");
}

#[tokio::test]
async fn every_route_of_the_router_is_documented_and_nothing_else() {
    // Arrange: the paths given to `.route(` in the router.
    let mut routed = BTreeSet::new();
    for chunk in ROUTER_SOURCE.split(".route(").skip(1) {
        let literal = chunk
            .trim_start()
            .strip_prefix('"')
            .expect("a path literal");
        routed.insert(literal[..literal.find('"').expect("closing quote")].to_owned());
    }
    let doc = document();
    let documented: BTreeSet<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect();

    // Assert
    assert!(routed.len() >= 9, "router parse found only {routed:?}");
    assert_eq!(routed, documented);
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token("user_probe");
    let doc = document();

    for (path, method) in operations(&doc) {
        // Act
        let mut request = app.authed(method_of(&method), &concrete(&path), &token);
        if method == "post" || method == "patch" {
            request = request.json(&json!({}));
        }
        let response = request.send().await.expect("sent");

        // Assert: not the router's own answers for a missing route or method.
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_ne!(status, 405, "{method} {path}: {body}");
        assert!(
            !(status == 404 && body["error"] == "Route non trouvée"),
            "{method} {path} is not routed"
        );
    }
}

#[tokio::test]
async fn documented_paths_answer_405_with_allow_for_every_undocumented_method() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token("user_probe");
    let doc = document();

    for (path, item) in doc["paths"].as_object().expect("paths") {
        let documented: BTreeSet<String> = METHODS
            .iter()
            .filter(|m| item.get(**m).is_some())
            .map(|m| m.to_ascii_uppercase())
            .collect();
        for method in METHODS.iter().filter(|m| item.get(**m).is_none()) {
            // Act
            let response = app
                .authed(method_of(method), &concrete(path), &token)
                .json(&json!({}))
                .send()
                .await
                .expect("sent");

            // Assert
            let context = format!("{method} {path}");
            assert_eq!(response.status(), 405, "{context}");
            let allow: BTreeSet<String> = response.headers()["allow"]
                .to_str()
                .expect("ASCII")
                .split(',')
                .map(|m| m.trim().to_ascii_uppercase())
                .filter(|m| m != "HEAD" && m != "OPTIONS")
                .collect();
            assert_eq!(
                allow, documented,
                "{context}: Allow lists the documented methods"
            );
            let body = json_body(response).await;
            assert_eq!(
                body,
                json!({"success": false, "error": "Méthode non autorisée"}),
                "{context}"
            );
        }
    }
}

#[tokio::test]
async fn each_operation_documents_exactly_the_statuses_the_contract_gives_it() {
    let doc = document();
    let table: BTreeMap<(String, String), BTreeSet<String>> = STATUSES
        .iter()
        .map(|(path, method, codes)| {
            (
                (path.to_string(), method.to_string()),
                codes.iter().map(|c| c.to_string()).collect(),
            )
        })
        .collect();
    let documented_ops: BTreeSet<(String, String)> = operations(&doc).into_iter().collect();
    assert_eq!(
        documented_ops,
        table.keys().cloned().collect(),
        "the table covers every documented operation"
    );
    for ((path, method), expected) in &table {
        let documented: BTreeSet<String> = doc["paths"][path][method]["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .cloned()
            .collect();
        assert_eq!(&documented, expected, "{method} {path}");
    }
}

#[tokio::test]
async fn protected_operations_require_the_bearer_scheme_and_public_ones_do_not() {
    let doc = document();
    for (path, method) in operations(&doc) {
        let security = &doc["paths"][&path][&method]["security"];
        let protected = path.starts_with("/api/images") && path != "/api/images/health";
        let expected = if protected {
            json!([{"bearerAuth": []}])
        } else {
            json!([])
        };
        assert_eq!(security, &expected, "{method} {path}");
        let responses = &doc["paths"][&path][&method]["responses"];
        assert_eq!(responses.get("401").is_some(), protected, "{method} {path}");
    }
}

#[tokio::test]
async fn every_example_in_the_document_matches_its_schema() {
    let doc = document();
    let mut checked = 0;
    fn visit(doc: &Value, value: &Value, at: &str, checked: &mut usize) {
        let Some(map) = value.as_object() else {
            if let Some(items) = value.as_array() {
                for (i, item) in items.iter().enumerate() {
                    visit(doc, item, &format!("{at}[{i}]"), checked);
                }
            }
            return;
        };
        // A media type, parameter or header object: `schema` beside examples.
        if let Some(schema) = map.get("schema") {
            if let Some(example) = map.get("example") {
                assert_valid(doc, schema, example, at);
                *checked += 1;
            }
            for (name, example) in map
                .get("examples")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                assert_valid(
                    doc,
                    schema,
                    &resolve(doc, example)["value"],
                    &format!("{at} {name}"),
                );
                *checked += 1;
            }
        }
        for (key, child) in map {
            visit(doc, child, &format!("{at}/{key}"), checked);
        }
    }
    visit(&doc, &doc["paths"], "#/paths", &mut checked);
    visit(&doc, &doc["components"], "#/components", &mut checked);
    // A schema's own `example`.
    for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
        if let Some(example) = schema.get("example") {
            assert_valid(&doc, schema, example, name);
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} examples checked");
}

#[tokio::test]
async fn successful_and_client_error_answers_match_the_document() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token("user_doc");
    let doc = document();
    let mut seen = Seen::default();

    // Public routes.
    for path in [
        "/api/health",
        "/api/images/health",
        "/api/ready",
        "/api/openapi.json",
        "/api/docs",
        "/metrics",
    ] {
        let response = app.request(Method::GET, path).send().await.expect("sent");
        assert_eq!(response.status(), 200, "{path}");
        seen.check(&doc, path, "get", response).await;
    }

    // The whole flow.
    let created = seen
        .check(
            &doc,
            "/api/images",
            "post",
            app.post_image(&token, &png_body(64)).await,
        )
        .await;
    let id = created["data"]["image_id"]
        .as_str()
        .expect("an id")
        .to_owned();
    let by_id = format!("/api/images/{id}");
    seen.check(
        &doc,
        "/api/images",
        "get",
        app.get("/api/images?page=1&limit=5", &token).await,
    )
    .await;
    seen.check(
        &doc,
        "/api/images/{id}",
        "get",
        app.get(&by_id, &token).await,
    )
    .await;
    seen.check(
        &doc,
        "/api/images/{id}/status",
        "patch",
        app.patch_status(&id, &token, "printed").await,
    )
    .await;
    seen.check(
        &doc,
        "/api/images/{id}",
        "delete",
        app.delete(&by_id, &token).await,
    )
    .await;

    // 400: validation of the query, the id, the bodies; bad JSON.
    seen.check(
        &doc,
        "/api/images",
        "get",
        app.get("/api/images?page=0&limit=101&status=lost", &token)
            .await,
    )
    .await;
    seen.check(
        &doc,
        "/api/images",
        "post",
        app.post_image(&token, &json!({"metadata": []})).await,
    )
    .await;
    let bad_json = app
        .authed(Method::POST, "/api/images", &token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("sent");
    seen.check(&doc, "/api/images", "post", bad_json).await;
    seen.check(
        &doc,
        "/api/images/{id}",
        "get",
        app.get("/api/images/a.b", &token).await,
    )
    .await;
    seen.check(
        &doc,
        "/api/images/{id}",
        "delete",
        app.delete("/api/images/a.b", &token).await,
    )
    .await;
    seen.check(
        &doc,
        "/api/images/{id}/status",
        "patch",
        app.patch_status("a.b", &token, "lost").await,
    )
    .await;

    // 401: no token, a bad token.
    seen.check(
        &doc,
        "/api/images",
        "get",
        app.request(Method::GET, "/api/images")
            .send()
            .await
            .expect("sent"),
    )
    .await;
    seen.check(
        &doc,
        "/api/images",
        "post",
        app.post_image("not.a.token", &png_body(64)).await,
    )
    .await;
    seen.check(&doc, "/api/images/{id}", "get", app.get(&by_id, "x").await)
        .await;
    seen.check(
        &doc,
        "/api/images/{id}",
        "delete",
        app.delete(&by_id, "").await,
    )
    .await;
    seen.check(
        &doc,
        "/api/images/{id}/status",
        "patch",
        app.patch_status(&id, "x", "printed").await,
    )
    .await;

    // 404: the deleted image.
    seen.check(
        &doc,
        "/api/images/{id}",
        "get",
        app.get(&by_id, &token).await,
    )
    .await;
    seen.check(
        &doc,
        "/api/images/{id}",
        "delete",
        app.delete(&by_id, &token).await,
    )
    .await;
    seen.check(
        &doc,
        "/api/images/{id}/status",
        "patch",
        app.patch_status(&id, &token, "printed").await,
    )
    .await;

    // 415: not JSON.
    for (method, path, template) in [
        (Method::POST, "/api/images".to_owned(), "/api/images"),
        (
            Method::PATCH,
            format!("{by_id}/status"),
            "/api/images/{id}/status",
        ),
    ] {
        let response = app
            .authed(method.clone(), &path, &token)
            .header("content-type", "text/plain")
            .body("status=printed")
            .send()
            .await
            .expect("sent");
        seen.check(
            &doc,
            template,
            &method.as_str().to_ascii_lowercase(),
            response,
        )
        .await;
    }

    // 4XX: a BDD refusal passed through.
    app.bdd.inject(
        FaultRule::new(Fault::Status(409))
            .method(Method::POST)
            .times(1),
    );
    seen.check(
        &doc,
        "/api/images",
        "post",
        app.post_image(&token, &png_body(64)).await,
    )
    .await;

    // Assert
    let statuses = seen.statuses();
    for status in [200, 201, 400, 401, 404, 409, 415] {
        assert!(
            statuses.contains(&status),
            "{status} provoked: {statuses:?}"
        );
    }
}

#[tokio::test]
async fn limit_answers_413_and_429_match_the_document() {
    // Arrange
    let app = spawn_app_with(
        TestOptions::default()
            .env("MAX_BODY_BYTES", "4096")
            .env("MAX_IMAGE_BYTES", "100")
            .env("RATE_LIMIT_PER_MINUTE", "4"),
    )
    .await;
    let token = app.token("user_limits");
    let doc = document();
    let mut seen = Seen::default();

    // Act + Assert: body over MAX_BODY_BYTES, image over MAX_IMAGE_BYTES, a
    // status body over both MAX_BODY_BYTES and the status route's own 64 KiB.
    let response = app.post_image(&token, &png_body(8000)).await;
    assert_eq!(response.status(), 413);
    seen.check(&doc, "/api/images", "post", response).await;
    let response = app.post_image(&token, &png_body(200)).await;
    assert_eq!(response.status(), 413);
    seen.check(&doc, "/api/images", "post", response).await;
    let response = app
        .authed(Method::PATCH, "/api/images/some_id/status", &token)
        .json(&json!({"status": "printed", "pad": "x".repeat(70_000)}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 413);
    seen.check(&doc, "/api/images/{id}/status", "patch", response)
        .await;

    // The rate limit: the fourth request above spends the budget.
    let mut limited = None;
    for _ in 0..4 {
        let response = app.get("/api/images", &token).await;
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
        seen.check(&doc, "/api/images", "get", response).await;
    }
    let response = limited.expect("a 429 within the budget");
    seen.check(&doc, "/api/images", "get", response).await;

    assert!(seen.statuses().is_superset(&BTreeSet::from([413, 429])));
}

#[tokio::test]
async fn upstream_failures_502_503_504_match_the_document() {
    let doc = document();
    let mut seen = Seen::default();

    // 502: the BDD answers 500; Storage refuses; a BDD without PATCH.
    let app = spawn_app().await;
    let token = app.token("user_up");
    let id = app.create_image(&token, "a cat").await["image_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let by_id = format!("/api/images/{id}");
    app.storage.inject(
        FaultRule::new(Fault::Status(500))
            .method(Method::DELETE)
            .times(1),
    );
    let response = app.delete(&by_id, &token).await;
    assert_eq!(response.status(), 502);
    seen.check(&doc, "/api/images/{id}", "delete", response)
        .await;
    app.storage.inject(
        FaultRule::new(Fault::Status(500))
            .method(Method::POST)
            .times(1),
    );
    let response = app.post_image(&token, &png_body(64)).await;
    assert_eq!(response.status(), 502);
    seen.check(&doc, "/api/images", "post", response).await;
    app.bdd.set_mode(BddMode::LikeReal);
    let like_real_id = app.create_image(&token, "a dog").await["image_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let response = app.patch_status(&like_real_id, &token, "printed").await;
    assert_eq!(response.status(), 502, "LikeReal has no PATCH route");
    seen.check(&doc, "/api/images/{id}/status", "patch", response)
        .await;
    app.bdd.set_mode(BddMode::Faithful);
    app.bdd.inject(FaultRule::new(Fault::Status(500)));
    for (method, template, response) in [
        ("get", "/api/images", app.get("/api/images", &token).await),
        (
            "post",
            "/api/images",
            app.post_image(&token, &png_body(64)).await,
        ),
        ("get", "/api/images/{id}", app.get(&by_id, &token).await),
        (
            "delete",
            "/api/images/{id}",
            app.delete(&by_id, &token).await,
        ),
        (
            "patch",
            "/api/images/{id}/status",
            app.patch_status(&id, &token, "printed").await,
        ),
    ] {
        assert_eq!(response.status(), 502, "{method} {template}");
        seen.check(&doc, template, method, response).await;
    }
    let response = app
        .request(Method::GET, "/api/ready")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 503);
    seen.check(&doc, "/api/ready", "get", response).await;

    // 503: the BDD, Storage, or the signing keys cannot be reached.
    let app =
        spawn_app_with(TestOptions::default().env("BDD_SERVICE_URL", closed_port_url())).await;
    let token = app.token("user_up");
    for (method, template, response) in [
        ("get", "/api/images", app.get("/api/images", &token).await),
        (
            "post",
            "/api/images",
            app.post_image(&token, &png_body(64)).await,
        ),
        ("get", "/api/images/{id}", app.get(&by_id, &token).await),
        (
            "delete",
            "/api/images/{id}",
            app.delete(&by_id, &token).await,
        ),
        (
            "patch",
            "/api/images/{id}/status",
            app.patch_status(&id, &token, "printed").await,
        ),
    ] {
        assert_eq!(response.status(), 503, "{method} {template}");
        seen.check(&doc, template, method, response).await;
    }
    let app = spawn_app_with(TestOptions::default().env("SUPABASE_URL", closed_port_url())).await;
    let response = app.post_image(&app.token("user_up"), &png_body(64)).await;
    assert_eq!(response.status(), 503);
    seen.check(&doc, "/api/images", "post", response).await;
    let app = spawn_app_with(TestOptions::default().env(
        "CLERK_JWKS_URL",
        format!("{}/.well-known/jwks.json", closed_port_url()),
    ))
    .await;
    let response = app.get("/api/images", &app.token("user_up")).await;
    assert_eq!(response.status(), 503);
    seen.check(&doc, "/api/images", "get", response).await;

    // 504: the BDD or Storage answers too late.
    let app = spawn_app_with(
        TestOptions::default()
            .env("UPSTREAM_TIMEOUT_MS", "300")
            .env("UPLOAD_TIMEOUT_MS", "300"),
    )
    .await;
    let token = app.token("user_up");
    app.bdd
        .inject(FaultRule::new(Fault::Delay(Duration::from_millis(1000))).method(Method::GET));
    let response = app.get("/api/images", &token).await;
    assert_eq!(response.status(), 504);
    seen.check(&doc, "/api/images", "get", response).await;
    app.storage.inject(
        FaultRule::new(Fault::Delay(Duration::from_millis(1000)))
            .method(Method::POST)
            .times(1),
    );
    let response = app.post_image(&token, &png_body(64)).await;
    assert_eq!(response.status(), 504);
    seen.check(&doc, "/api/images", "post", response).await;

    assert!(seen
        .statuses()
        .is_superset(&BTreeSet::from([502, 503, 504])));
}

#[tokio::test]
async fn the_docs_page_is_self_contained_html_that_renders_the_document() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app
        .request(Method::GET, "/api/docs")
        .send()
        .await
        .expect("sent");

    // Assert
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let page = response.text().await.expect("body");
    let lower = page.to_ascii_lowercase();
    for external in [
        "http://", "https://", "//cdn", "<link", " src=", "@import", "url(",
    ] {
        assert!(
            !lower.contains(external),
            "the page references {external:?}"
        );
    }
    assert!(
        page.contains("fetch(\"/api/openapi.json\""),
        "fetches the document"
    );
    assert!(page.starts_with("<!doctype html>"));
}
