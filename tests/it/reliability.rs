//! Retries, rate limits, resume, early stop, secrets.
