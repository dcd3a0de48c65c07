//! Integration tests: the service over real HTTP on loopback, its upstreams as
//! in-process stand-ins that record what they were sent.

mod helpers;

mod abuse;
mod auth;
mod behaviour;
mod binary;
mod container;
mod front_door;
mod images;
mod limits;
mod metrics;
mod openapi;
mod token_kinds;
mod upstream;
