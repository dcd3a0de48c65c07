//! Operations that span Storage and the BDD service, with no transaction
//! between them: each step's failure is handled so that an image exists
//! once or not at all, and Storage keeps no file no record points at
//! (contract §3 and §7).

pub mod create;
pub mod delete;
