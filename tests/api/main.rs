//! Integration tests: the service over real HTTP on loopback, its upstreams as
//! in-process stand-ins that record what they were sent.

mod helpers;

mod auth;
mod behaviour;
mod binary;
mod images;
mod upstream;
