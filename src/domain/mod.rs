//! Validated values, one file per concept: built once at the edge, so
//! handlers and clients only see valid data.

pub mod ids;
pub mod image;
pub mod inputs;
pub mod validation;

pub use ids::{ImageId, UserId};
pub use image::{DecodedImage, ImageDataError, ImageKind};
pub use inputs::{parse_status_body, ImageStatus, ListQuery, NewImage, NewImageError};
pub use validation::{msg, FieldError, Location};
