//! AI semantics, independent of transport: SQL return types and their JSON
//! schemas ([`types`]), the Databricks AI task functions ([`functions`]),
//! image inputs ([`image`]), token estimates ([`tokens`]) and the chunking
//! of AI aggregates ([`aggregate`]).

pub mod aggregate;
pub mod functions;
pub mod image;
pub mod tokens;
pub mod types;
