pub mod close;
pub mod decode;
pub mod error;
pub mod frame;
pub mod mask;
pub mod utf8;
