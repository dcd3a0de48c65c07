//! Local, faithful HTTP stand-ins for the services behind the image service:
//! Clerk (JWKS issuer), Supabase Storage and the BDD records service.
//!
//! They serve two audiences:
//! - integration tests, which start them in-process on random ports, read the
//!   requests they received ([`StandIn::requests`]) and make them misbehave
//!   ([`StandIn::inject`], [`StandIn::set_fault_rate`]);
//! - the dev stack, which lets a newcomer run the service with no cloud
//!   account (fixed ports, optional on-disk persistence).
//!
//! Each stand-in answers like the real service, defects included where a
//! mode asks for them (see [`BddMode::LikeReal`]): a test that passes against
//! a stand-in should pass against the real thing. Every stand-in derefs to
//! its [`StandIn`] for the URL, recording and faults.

pub mod bdd;
pub mod clerk;
pub mod server;
pub mod storage;

pub use bdd::{owner_uuid, BddMode, BddOptions, BddStandIn};
pub use clerk::{claims_of_kind, standard_claims, test_key, ClerkStandIn, SigningKey, TokenKind};
pub use server::{Fault, FaultRule, RecordedRequest, StandIn};
pub use storage::{ObjectInfo, StorageOptions, StorageStandIn};
