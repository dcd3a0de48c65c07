//! Validated values, one file per concept: built once at the edge, so
//! handlers and clients only see valid data.

pub mod body_scan;
pub mod ids;
pub mod image;
pub mod image_stream;
pub mod inputs;
pub mod validation;

pub use ids::{ImageId, UserId};
pub use image::{DecodedImage, ImageDataError, ImageKind};
pub use inputs::{
    check_create, leading_fields_valid, parse_status_body, CreateText, ImageCheck, ImageStatus,
    ListQuery, NewImage, NewImageError,
};
pub use validation::{msg, FieldError, Location};
