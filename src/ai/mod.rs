//! AI semantics, independent of transport: SQL return types and their JSON
//! schemas ([`types`]), the Databricks AI task functions ([`functions`]),
//! image inputs ([`image`]) and token estimates ([`tokens`]).

pub mod functions;
pub mod image;
pub mod tokens;
pub mod types;
