//! Databricks AI task functions (stub).
