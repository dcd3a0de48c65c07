//! Integration tests: the service over real HTTP on loopback, its upstreams as
//! in-process stand-ins that record what they were sent.

#[path = "../common/mod.rs"]
mod common;
mod helpers;

mod abuse;
mod auth;
mod binary;
mod container;
mod cors;
mod errors;
mod exactly_once;
mod front_door;
mod headers;
mod health;
mod images;
mod layout;
mod limits;
mod metrics;
mod openapi;
mod reconcile;
mod shutdown;
mod streaming;
mod token_kinds;
mod upstream;
mod validation;
