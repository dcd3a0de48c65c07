//! The module graph of `src/`: imports run one way, from the routes down to
//! the clients and the domain, with no circle. Each top-level module has a
//! rank; a module may use only modules of a lower rank (tests excepted), so
//! a new module has to be placed, and an upward import fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Rank of every top-level module of `src/` (higher uses lower).
const RANKS: &[(&str, u8)] = &[
    // The bottom: values and tools that know no other module.
    ("clock", 0),
    ("config", 0),
    ("connections", 0),
    ("domain", 0),
    ("log_writer", 0),
    ("metrics", 0),
    ("request_id", 0),
    ("response", 0),
    ("request_scope", 1),
    ("json_log", 2),
    ("telemetry", 3),
    // The clients of the services behind this one.
    ("clients", 1),
    ("redis_link", 2),
    ("auth", 2),
    // What the service keeps: keys, limits, the cleanup queue.
    ("idempotency", 3),
    ("ratelimit", 3),
    ("cleaner", 3),
    ("reconcile", 4),
    ("state", 4),
    ("error", 4),
    // The HTTP side.
    ("body", 5),
    ("middleware", 5),
    ("extract", 6),
    ("flows", 7),
    ("routes", 8),
    ("app", 9),
];

/// Top-level modules each module of `src/` names (`crate::x`), tests left out.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pending = vec![src.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let top = relative
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            if top == "lib" || top == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let used = graph.entry(top.clone()).or_default();
            for (at, _) in code.match_indices("crate::") {
                let name: String = code[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    used.insert(name);
                }
            }
        }
    }
    graph
}

#[test]
fn every_import_runs_down_the_ranks_so_the_module_graph_has_no_circle() {
    let ranks: BTreeMap<&str, u8> = RANKS.iter().copied().collect();
    let graph = imports();
    let unranked: Vec<&String> = graph
        .keys()
        .filter(|m| !ranks.contains_key(m.as_str()))
        .collect();
    assert!(
        unranked.is_empty(),
        "modules without a rank in tests/api/layout.rs: {unranked:?}"
    );
    let mut upward = Vec::new();
    for (module, used) in &graph {
        for other in used {
            let (Some(from), Some(to)) = (ranks.get(module.as_str()), ranks.get(other.as_str()))
            else {
                continue;
            };
            if to >= from {
                upward.push(format!("{module} ({from}) uses {other} ({to})"));
            }
        }
    }
    assert!(upward.is_empty(), "imports against the layers: {upward:#?}");
    // The scan sees the modules the README's layout describes.
    for module in ["routes", "flows", "clients", "domain", "auth"] {
        assert!(graph.contains_key(module), "{module} not found in src/");
    }
}
