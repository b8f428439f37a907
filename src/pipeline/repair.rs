//! Repair: a typed reply that was cut off or did not fit the result type is
//! asked again, so a few stray answers do not become failed rows.
//!
//! After a call's reply arrives, a row whose answer does not parse into the
//! result type is diagnosed:
//! - cut off: the model stopped at `max_tokens` (`finish_reason = length`)
//!   before its JSON was complete. It is asked again, the same messages with
//!   a larger `max_tokens` ([`raised_max_tokens`]);
//! - did not fit: a complete answer of the wrong shape. It is asked again
//!   with the validation error appended as a user message, so the model
//!   knows what to fix.
//!
//! Up to `--max-repairs` (default 1) repairs per row, each an ordinary call
//! (rate limits, retries). The row's `attempts` and usage (so its `cost` and
//! the job's budgets) include every repair; `repairs` counts them. A row
//! still unfit after its repairs keeps the last error, with what to do when
//! the answer was cut off: raise `max_tokens`.

use serde_json::{Map, Value};

use crate::pipeline::client::{Abort, Client, Sent};
use crate::pipeline::outcome::Outcome;
use crate::pipeline::render::Call;
use crate::provider::dialect::Dialect;
use crate::provider::wire::Task;

/// The smallest `max_tokens` a repair of a cut-off answer asks for.
const MIN_REPAIR_MAX_TOKENS: u64 = 64;

/// Why an answer needs repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfit {
    /// Stopped at `max_tokens` before it was complete.
    CutOff,
    /// Complete, but not of the result type: the validation error.
    Mismatch(String),
}

impl Unfit {
    /// The diagnosis of an outcome whose answer did not fit.
    pub fn of(o: &Outcome) -> Unfit {
        if o.finish_reason.as_deref() == Some("length") {
            Unfit::CutOff
        } else {
            Unfit::Mismatch(o.error_message.clone().unwrap_or_default())
        }
    }
}

/// Send `call` until it succeeds, fails for good, or the retries run out
/// ([`Client::send`]), then repair typed replies that were cut off or did
/// not fit (up to the client's `max_repairs` more calls). Returns one
/// outcome per row of the call, in the call's row order.
pub async fn execute(client: &Client, call: &Call) -> Result<Vec<Outcome>, Abort> {
    let max_repairs = client.max_repairs;
    let Sent {
        mut outcomes,
        unfit,
    } = client.send(call).await?;
    // Bodies of other APIs have no conversation to add a correction to; an
    // embeddings batch has nothing to repair.
    let repairable = client.shape().task == Task::Chat
        && !client.shape().raw
        && call.rows.len() == 1
        && unfit.first() == Some(&true);
    if repairable && max_repairs > 0 {
        if let Some(body) = body_object(call) {
            let first = outcomes.swap_remove(0);
            return Ok(vec![repair(client, call, body, first, max_repairs).await?]);
        }
    }
    for (o, unfit) in outcomes.iter_mut().zip(unfit) {
        if unfit {
            explain(o);
        }
    }
    Ok(outcomes)
}

async fn repair(
    client: &Client,
    call: &Call,
    mut body: Map<String, Value>,
    mut outcome: Outcome,
    max_repairs: u32,
) -> Result<Outcome, Abort> {
    for n in 1..=max_repairs {
        let unfit = Unfit::of(&outcome);
        let reserve = amend(client.endpoint().dialect, &mut body, &unfit, &outcome);
        let bytes = serde_json::to_vec(&Value::Object(body.clone())).unwrap_or_default();
        let est_prompt_tokens = call.est_prompt_tokens
            + match &unfit {
                Unfit::Mismatch(e) => crate::ai::tokens::estimate(e),
                Unfit::CutOff => 0,
            };
        let again = Call {
            body: bytes.into(),
            est_tokens: est_prompt_tokens + reserve,
            est_prompt_tokens,
            ..call.clone()
        };
        let Sent {
            mut outcomes,
            unfit,
        } = client.send(&again).await?;
        let mut next = outcomes.swap_remove(0);
        next.usage.add(&outcome.usage);
        next.attempts += outcome.attempts;
        next.ambiguous_attempts += outcome.ambiguous_attempts;
        next.latency_ms = match (next.latency_ms, outcome.latency_ms) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        next.ttft_ms = outcome.ttft_ms.or(next.ttft_ms);
        next.repairs = n;
        let still_unfit = unfit.first() == Some(&true);
        outcome = next;
        if !still_unfit {
            return Ok(outcome);
        }
    }
    explain(&mut outcome);
    if let Some(m) = &mut outcome.error_message {
        let s = if max_repairs == 1 { "" } else { "s" };
        m.push_str(&format!(" (after {max_repairs} repair{s})"));
    }
    Ok(outcome)
}

/// Says what to do about an answer that was cut off.
fn explain(o: &mut Outcome) {
    if o.finish_reason.as_deref() != Some("length") {
        return;
    }
    if let Some(m) = &mut o.error_message {
        *m = format!(
            "the reply was cut off at max_tokens (finish_reason = length) before it was \
             complete: raise max_tokens (--param max_tokens=N, or [params] in the job file); {m}"
        );
    }
}

/// The call's body as a JSON object, to amend for a repair.
fn body_object(call: &Call) -> Option<Map<String, Value>> {
    match serde_json::from_slice(&call.body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// Changes `body` into the repair request for `unfit`; returns the output
/// tokens it may use (for rate limits).
/// The body is in the endpoint's `dialect`, which says where its cap and
/// its turns are.
fn amend(dialect: Dialect, body: &mut Map<String, Value>, unfit: &Unfit, last: &Outcome) -> u64 {
    let current = dialect.max_tokens(body);
    match unfit {
        Unfit::CutOff => {
            let raised = raised_max_tokens(current, last.usage.completion_tokens.max(0) as u64);
            dialect.set_max_tokens(body, raised);
            raised
        }
        Unfit::Mismatch(error) => {
            dialect.push_user_turn(
                body,
                format!(
                    "Your previous answer did not match the required JSON schema: {error}. \
                     Answer again with only a JSON document that matches the schema."
                ),
            );
            current.unwrap_or(crate::pipeline::render::DEFAULT_OUTPUT_RESERVE)
        }
    }
}

/// `max_tokens` for a repair of an answer cut off at `current` (or, when the
/// request set none, after `used` tokens): twice as many, and at least
/// [`MIN_REPAIR_MAX_TOKENS`].
pub fn raised_max_tokens(current: Option<u64>, used: u64) -> u64 {
    let base = current.unwrap_or(used).max(used);
    base.saturating_mul(2).max(MIN_REPAIR_MAX_TOKENS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cut_off_answers_get_more_room_and_mismatches_the_error() {
        assert_eq!(raised_max_tokens(Some(60), 60), 120);
        assert_eq!(raised_max_tokens(Some(4), 4), MIN_REPAIR_MAX_TOKENS);
        assert_eq!(raised_max_tokens(None, 100), 200);

        let cut = Outcome {
            finish_reason: Some("length".into()),
            error_message: Some("reply is not JSON (EOF while parsing a string)".into()),
            usage: crate::pipeline::outcome::Usage {
                completion_tokens: 60,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(Unfit::of(&cut), Unfit::CutOff);
        let mut body: Map<String, Value> = serde_json::from_value(
            json!({"messages": [{"role": "user", "content": "q"}], "max_tokens": 60}),
        )
        .unwrap();
        assert_eq!(amend(Dialect::OpenAi, &mut body, &Unfit::CutOff, &cut), 120);
        assert_eq!(body["max_tokens"], json!(120));
        assert_eq!(body["messages"].as_array().unwrap().len(), 1);

        let wrong = Outcome {
            finish_reason: Some("stop".into()),
            error_message: Some("result.a: expected INT".into()),
            ..Default::default()
        };
        let unfit = Unfit::of(&wrong);
        assert_eq!(unfit, Unfit::Mismatch("result.a: expected INT".into()));
        amend(Dialect::OpenAi, &mut body, &unfit, &wrong);
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2);
        assert!(messages[1]["content"]
            .as_str()
            .unwrap()
            .contains("result.a: expected INT"));

        let mut o = cut.clone();
        explain(&mut o);
        assert!(o.error_message.unwrap().contains("raise max_tokens"));
    }
}
