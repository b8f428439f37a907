//! Rate limits: requests and tokens per minute, told or learned.
//!
//! Told limits are paced smoothly with a small burst, so a job runs at the
//! limit without bunching into 429s: requests by the GCRA of
//! [`RequestPace`], tokens by a [`TokenBucket`] a second deep.
//! Not told, the limiter learns: the `x-ratelimit-limit-*` headers (OpenAI,
//! Anthropic and Databricks names) give the limit outright; a `Retry-After`
//! or an exhausted `x-ratelimit-remaining-*` pauses all sending until the
//! window resets; and without headers, 429s drive an AIMD rate (cut by a
//! quarter on a refusal, at most once a second; grown slowly while replies
//! succeed). A told `--rpm` is the AIMD ceiling: 429s cut under it too, and
//! the pace grows back to it, never above.
//!
//! Provider-shaped limits come on top: `--itpm` (input tokens per minute,
//! charged the prompt estimate), `--qph` (queries per hour), and `--otpm`
//! (output tokens per minute). OTPM is enforced the way Databricks does:
//! `max_tokens` is reserved before a request is admitted, and the part the
//! reply did not use is given back from its real `usage`, which the
//! [`TokenBucket`] allows (governor cannot return capacity); without the
//! refund a generous `max_tokens` (10x the real answers) would cut
//! throughput tenfold. A request larger than a bucket's second waits until
//! the bucket has refilled all of it: a told limit is never exceeded
//! (charged only a second's worth, as before, `--tpm 600` with 100-token
//! requests sent one a second, ten times the limit).

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::HeaderMap;
use tokio::time::Instant;

use crate::provider::retry::{header_str, parse_reset};

/// Learned limits are paced this far below what the server announces, to
/// absorb clock skew between our pacing and its buckets.
const LEARNED_HEADROOM: f64 = 0.97;
/// Multiplicative decrease on a 429, at least (the answered rate may say
/// to cut deeper).
const AIMD_DECREASE: f64 = 0.8;
/// Growth of a learned pace per second while replies succeed: slow enough
/// that the pace spends most of its time just under the server's rate.
const AIMD_GROWTH_PER_SEC: f64 = 0.03;

/// `--qph`: one query per slot of the hour, governor's GCRA.
struct Pace {
    limiter: DefaultDirectRateLimiter,
}

impl Pace {
    fn new(per_minute: f64, burst: u32) -> Arc<Pace> {
        let per_minute = per_minute.max(1.0);
        let period = Duration::from_secs_f64(60.0 / per_minute);
        let burst = burst.max(1);
        // `with_period` only fails on a zero period, which max(1.0) rules out.
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Arc::new(Pace {
            limiter: RateLimiter::direct(quota),
        })
    }
}

/// The request pace: GCRA by reservation, with a rate that can change
/// while requests wait. Each admission takes the next slot (`tat`, the
/// theoretical arrival time) and sleeps until it. A faster rate spaces the
/// slots handed out from then on. A slower one ([`RequestPace::slow_to`])
/// also revokes the slots already handed out: the requests waiting on them
/// take new ones at the new rate. Kept, they went out at the old rate after
/// the server had said it was too fast (a crowd of `--concurrency` waiters
/// holds a tenth of a second of slots or more), and were refused alike. A
/// governor limiter would have to be rebuilt for every change, and each
/// rebuild hands out a fresh burst while the old waiters keep going.
///
/// Until a pace is told or learned, sending starts slowly and doubles its
/// rate every [`RAMP_DOUBLING`] (TCP's slow start, by rate), up to
/// [`RAMP_END`], where it stops pacing. A server whose first replies say
/// nothing about its limit would otherwise get a whole `--concurrency` of
/// requests in its first few milliseconds, most of them refused before the
/// first 429 could teach us anything. The ramp costs an unlimited server
/// under a second, once per job.
struct RequestPace {
    /// None: no pace (not told, nothing learned yet).
    per_minute: Option<f64>,
    /// Requests allowed at once after a quiet spell.
    burst: u32,
    tat: Instant,
    /// Slow start still on (nothing told or learned, not yet at its end).
    ramp: bool,
    /// When the first request went out (the ramp starts then).
    ramp_from: Option<Instant>,
    /// Bumped when the slots handed out are revoked.
    generation: u64,
    /// Requests that may go at once, off the pace: what the server said
    /// was left in its bucket ([`Limiter::credit`]).
    credit: u32,
    /// After a cut with nothing but 429s to go on, one request goes first
    /// and the rest wait for its answer ([`Probe`]).
    probe: Probe,
}

/// A cut learned from bare 429s is a guess; the first request at the new
/// pace tests it. Were the others to follow at once, every request sent
/// in the time a refusal takes to come back would be refused too, on
/// every cut of a descent from far above the limit (a sixty-second bucket
/// run dry at a thousand requests a second takes a dozen cuts): most of
/// the refusals were those. The probe makes each cut cost one.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Probe {
    Off,
    /// The next slot is the probe.
    Next {
        wait: Duration,
    },
    /// The probe is out: no slot until its answer, or until `until` (a
    /// refusal comes back fast; an answer that takes longer is a success),
    /// and then one more goes alone: a refusal that came back slower than
    /// expected (a loaded machine) must not release everyone at once.
    Out {
        until: Instant,
        wait: Duration,
    },
}

impl RequestPace {
    /// No pace yet, nothing handed out: one request at a time from `now`.
    fn idle(now: Instant) -> RequestPace {
        RequestPace {
            per_minute: None,
            burst: 1,
            tat: now,
            ramp: false,
            ramp_from: None,
            generation: 0,
            credit: 0,
            probe: Probe::Off,
        }
    }

    fn set(&mut self, per_minute: f64) {
        let per_minute = per_minute.max(1.0);
        self.per_minute = Some(per_minute);
        self.burst = request_burst(per_minute);
        self.ramp = false;
    }

    /// A slower pace, at once: the slots handed out so far are revoked
    /// (their holders reserve again) and the next slot is a whole period
    /// away with no burst, as if the server's bucket were empty (a refusal
    /// says it is).
    fn slow_to(&mut self, per_minute: f64, now: Instant) {
        self.set(per_minute);
        let period = Duration::from_secs_f64(60.0 / per_minute.max(1.0));
        self.tat = now + period * self.burst;
        self.generation += 1;
        self.probe = Probe::Off;
    }

    /// Back to `pace` (None: no pace, or slow start where it had got to)
    /// after cuts that proved needless: the slots handed out at the slower
    /// pace are revoked, and the waiters take new ones at once.
    fn undo_to(&mut self, pace: Option<f64>, now: Instant) {
        match pace {
            Some(p) => self.set(p),
            None => {
                self.per_minute = None;
                self.ramp = true;
            }
        }
        self.tat = now;
        self.generation += 1;
        self.probe = Probe::Off;
    }

    /// The slow-start rate at `now`, or None once the ramp is over.
    fn ramp_rate(&mut self, now: Instant) -> Option<f64> {
        if !self.ramp {
            return None;
        }
        let from = *self.ramp_from.get_or_insert(now);
        let doublings = now.duration_since(from).as_secs_f64() / RAMP_DOUBLING.as_secs_f64();
        let rate = RAMP_START * 2f64.powf(doublings);
        if rate >= RAMP_END {
            self.ramp = false;
            return None;
        }
        Some(rate)
    }

    /// The time the next request may go, reserved; or, while a probe is
    /// out, Err(the time to ask again).
    fn reserve(&mut self, now: Instant) -> Result<Instant, Instant> {
        match self.probe {
            Probe::Out { until, .. } if now < until => return Err(until),
            Probe::Out { wait, .. } => self.probe = Probe::Next { wait },
            _ => {}
        }
        let at = self.next_slot(now);
        if let Probe::Next { wait } = self.probe {
            self.probe = Probe::Out {
                until: at + wait,
                wait,
            };
        }
        Ok(at)
    }

    fn next_slot(&mut self, now: Instant) -> Instant {
        if self.credit > 0 && self.per_minute.is_some() {
            self.credit -= 1;
            return now;
        }
        let per_minute = match self.per_minute {
            Some(p) => p,
            // The ramp's rate where the schedule has got to: slots handed
            // out to a crowd of waiters at once follow the curve instead of
            // all keeping the first, slow spacing.
            None => match self.ramp_rate(self.tat.max(now)) {
                Some(r) => {
                    self.burst = request_burst(r);
                    r
                }
                None => return now,
            },
        };
        let period = Duration::from_secs_f64(60.0 / per_minute);
        let tolerance = period * self.burst.saturating_sub(1);
        let tat = self.tat.max(now);
        let at = now.max(tat.checked_sub(tolerance).unwrap_or(now));
        self.tat = tat + period;
        at
    }
}

/// What the limiter has learned or been told, for the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LimitState {
    pub rpm: Option<f64>,
    pub tpm: Option<f64>,
}

/// Every limit a job can be told, per provider dimension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    /// Input tokens per minute (prompt estimates).
    pub itpm: Option<u32>,
    /// Output tokens per minute (`max_tokens` reserved, unused part refunded).
    pub otpm: Option<u32>,
    /// Queries per hour.
    pub qph: Option<u32>,
}

pub struct Limiter {
    told_rpm: bool,
    told_tpm: bool,
    told_itpm: bool,
    told_otpm: bool,
    requests: Mutex<RequestPace>,
    /// Wakes the requests waiting on slots when they are revoked.
    revoked: tokio::sync::Notify,
    /// Requests admitted so far (the next one's [`Ticket::seq`]).
    admitted: AtomicU64,
    tokens: RwLock<Option<Arc<TokenBucket>>>,
    pause_until: Mutex<Option<Instant>>,
    aimd: Mutex<Aimd>,
    /// Input and output tokens per minute apart, as Anthropic limits
    /// them: told, or learned from its `anthropic-ratelimit-*` headers.
    input_tokens: RwLock<Option<Arc<TokenBucket>>>,
    hourly: Option<Arc<Pace>>,
    output_tokens: RwLock<Option<Arc<TokenBucket>>>,
}

/// Adapting the request pace to the server: learning it when not told, and
/// cutting under a told one when the server refuses it.
struct Aimd {
    /// The highest pace allowed: the told `--rpm`, or the limit the server
    /// advertised (`x-ratelimit-limit-requests`) less the headroom. Growth
    /// stops there.
    ceiling: Option<f64>,
    /// Bumped on every cut: a 429 to a request admitted before the last cut
    /// is news of the old rate, not of the new one, so it cuts no further
    /// (one cut per congestion event, as in TCP).
    epoch: u64,
    last_decrease: Option<Instant>,
    last_increase: Option<Instant>,
    /// Recent successful replies, to measure what the server let through.
    answered: VecDeque<Instant>,
    /// How long the last refusal took to come back.
    refusal_rtt: Option<Duration>,
    /// Replies to the requests admitted in this epoch, and how many were
    /// refused.
    tally: Tally,
    /// The cuts made in a row, while they last: the evidence on whether
    /// the refusals follow the pace.
    cascade: Option<Cascade>,
    /// The share of replies refused whatever the pace, once the refusals
    /// were seen not to fall when it fell (0 until then): refusals within
    /// it cut nothing and hold nobody back.
    noise: f64,
}

/// Replies counted over some span, and how many of them were 429s.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Tally {
    replies: u32,
    refused: u32,
}

impl Tally {
    fn count(&mut self, refused: bool) {
        self.replies += 1;
        self.refused += u32::from(refused);
    }

    fn add(&mut self, other: Tally) {
        self.replies += other.replies;
        self.refused += other.refused;
    }

    fn share(&self) -> f64 {
        if self.replies == 0 {
            return 0.0;
        }
        self.refused as f64 / self.replies as f64
    }

    /// At most the refusals a random share `noise` gives this many
    /// replies, give or take chance and an estimate of the share that ran
    /// low: half as many again, three standard deviations and one. A
    /// needless cut costs far more than a few refusals.
    fn within(&self, noise: f64) -> bool {
        let expected = noise * self.replies as f64;
        (self.refused as f64) <= 1.5 * expected + 3.0 * expected.sqrt() + 1.0
    }
}

/// Cuts in a row, each before the pace it set held for long.
///
/// A limit's refusals follow the pace: cut below the limit, they stop;
/// above it, they come thick (a drained bucket refuses nearly all), so the
/// epochs between cuts are a reply or two. Refusals unrelated to load (a
/// gateway's own quota, a shared backend) come at the same share at any
/// pace, one in every dozen or so replies: cutting for them only slows the
/// job (the issue measured a tenfold slowdown at 5% random 429s, and a
/// job at 1 row/s with 40% random faults). So once two cuts have halved
/// the pace and the refusals kept coming at a low share that did not fall
/// with it, they are noise: the pace goes back to where the cuts started,
/// and from then on a 429 cuts only when an epoch's refusals exceed that
/// share.
#[derive(Debug, Clone)]
struct Cascade {
    /// The pace before the first cut (None: unpaced or slow start): where
    /// an undo returns.
    from: Option<f64>,
    /// The epochs between the cuts since the first, oldest first, by
    /// number. Their replies are counted until the run ends: a refusal
    /// comes back faster than an answer, so an epoch ended by one has
    /// answers still on their way.
    epochs: Vec<(u64, Tally)>,
}

impl Cascade {
    /// The refusals did not fall when the pace fell, and were too few to
    /// be a drained bucket: the share they come at, if so.
    fn noise(&self) -> Option<f64> {
        if self.epochs.len() < 2 {
            return None;
        }
        let pool = |epochs: &[(u64, Tally)]| {
            let mut all = Tally::default();
            epochs.iter().for_each(|(_, t)| all.add(*t));
            all
        };
        let half = self.epochs.len() / 2;
        let all = pool(&self.epochs);
        let (early, late) = (pool(&self.epochs[..half]), pool(&self.epochs[half..]));
        let noise = all.replies >= NOISE_EVIDENCE
            && all.share() <= NOISE_MAX
            && late.share() >= early.share() * NOISE_FALL;
        noise.then(|| all.share())
    }
}

impl Aimd {
    /// Replies answered in the last `window` (or since `since`, if later),
    /// per minute; None when too little time has passed to tell.
    fn goodput(&self, now: Instant, since: Option<Instant>) -> Option<f64> {
        let from = now.checked_sub(GOODPUT_WINDOW).unwrap_or(now);
        let from = since.map_or(from, |s| s.max(from));
        let secs = now.duration_since(from).as_secs_f64();
        // Shorter windows hold a handful of answers: too noisy to pace by.
        if secs < GOODPUT_MIN_WINDOW {
            return None;
        }
        let n = self.answered.iter().filter(|t| **t >= from).count();
        (n > 0).then(|| n as f64 / secs * 60.0)
    }
}

/// Slow start: the first rate (per minute), how often it doubles, and
/// where it ends (a pace no limit we have met comes near).
const RAMP_START: f64 = 1_200.0;
const RAMP_DOUBLING: Duration = Duration::from_millis(100);
const RAMP_END: f64 = 600_000.0;

/// How far back the answered rate is measured, and the least span it is
/// trusted over.
const GOODPUT_WINDOW: Duration = Duration::from_secs(1);
const GOODPUT_MIN_WINDOW: f64 = 0.25;
/// Bounds on how long the others wait for a probe's answer.
const PROBE_WAIT_MIN: Duration = Duration::from_millis(20);
const PROBE_WAIT_MAX: Duration = Duration::from_secs(1);
/// No single cut goes below this share of the pace it cuts.
const DEEPEST_CUT: f64 = 0.5;
/// Telling random refusals from a limit's ([`Cascade`]): the replies seen
/// between cuts before judging, the highest share of them refused that
/// may be noise (a drained bucket refuses far more), and how far the
/// share must fall, from the earlier epochs of a run of cuts to the
/// later ones, for the refusals to follow the pace.
const NOISE_EVIDENCE: u32 = 24;
const NOISE_MAX: f64 = 0.25;
const NOISE_FALL: f64 = 0.6;
/// Replies in one epoch that end a run of cuts: the pace held.
const CASCADE_END: u32 = 48;
/// An epoch's tally is halved past this many replies, so that a limit
/// met late in a long epoch is not drowned in its early replies.
const TALLY_KEPT: u32 = 64;
const ANSWERED_KEPT: usize = 4096;

impl Limiter {
    pub fn new(rpm: Option<u32>, tpm: Option<u32>) -> Limiter {
        Limiter::with_limits(&Limits {
            rpm,
            tpm,
            ..Limits::default()
        })
    }

    pub fn with_limits(l: &Limits) -> Limiter {
        let (rpm, tpm) = (l.rpm, l.tpm);
        let mut requests = RequestPace {
            ramp: true,
            ..RequestPace::idle(Instant::now())
        };
        if let Some(r) = rpm {
            requests.set(r as f64);
        }
        Limiter {
            told_rpm: rpm.is_some(),
            told_tpm: tpm.is_some(),
            told_itpm: l.itpm.is_some(),
            told_otpm: l.otpm.is_some(),
            requests: Mutex::new(requests),
            revoked: tokio::sync::Notify::new(),
            admitted: AtomicU64::new(0),
            tokens: RwLock::new(tpm.map(|t| TokenBucket::per_minute(t as f64, TOKEN_BURST_SECS))),
            pause_until: Mutex::new(None),
            aimd: Mutex::new(Aimd {
                ceiling: rpm.map(|r| r as f64),
                epoch: 0,
                last_decrease: None,
                last_increase: None,
                answered: VecDeque::with_capacity(ANSWERED_KEPT),
                refusal_rtt: None,
                tally: Tally::default(),
                cascade: None,
                noise: 0.0,
            }),
            input_tokens: RwLock::new(
                l.itpm
                    .map(|t| TokenBucket::per_minute(t as f64, TOKEN_BURST_SECS)),
            ),
            // One query per hour-slot: a burst of one keeps them spread out.
            hourly: l.qph.map(|q| Pace::new(q as f64 / 60.0, 1)),
            output_tokens: RwLock::new(
                l.otpm
                    .map(|t| TokenBucket::per_minute(t as f64, OUTPUT_BURST_SECS)),
            ),
        }
    }

    /// Wait until a request with an estimated `prompt` and a reserved
    /// `output` (its `max_tokens`) may be sent, under every limit. Every
    /// attempt, first or retry, comes through here. The returned grant
    /// holds the OTPM reservation: [`OutputGrant::settle`] it with the real
    /// output tokens; dropped unsettled (the attempt got no answer, so
    /// nothing was produced), it gives the whole reservation back.
    pub async fn admit_call(&self, prompt: u64, output: u64) -> OutputGrant {
        let ticket = self.admit(prompt + output).await;
        if let Some(pace) = &self.hourly {
            pace.limiter.until_ready().await;
        }
        if let Some(bucket) = read(&self.input_tokens) {
            bucket.take(prompt as f64).await;
        }
        match read(&self.output_tokens) {
            Some(bucket) => {
                let reserved = bucket.take(output as f64).await;
                OutputGrant {
                    bucket: Some(bucket),
                    reserved,
                    ticket,
                }
            }
            None => OutputGrant {
                bucket: None,
                reserved: 0.0,
                ticket,
            },
        }
    }

    /// Wait until a request estimated at `tokens` tokens may be sent;
    /// returns its ticket (for [`Limiter::observe`] of its reply).
    pub async fn admit(&self, tokens: u64) -> Ticket {
        loop {
            let pause = *lock(&self.pause_until);
            match pause {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => break,
            }
        }
        let epoch = loop {
            // Registered before the slot is asked for: a probe's answer
            // from then on wakes this request (tokio's Notify keeps the
            // wake-up for a future made before `notify_waiters`).
            let woken = self.revoked.notified();
            // The epoch of the reservation, not of the moment it comes due:
            // a request sent before a cut that is refused after it is news
            // of the old pace, and must not cut again. Read under the same
            // locks as the slot is taken (in the order cuts take them), so
            // a slot handed out after a cut (a probe) carries its epoch.
            let (slot, generation, epoch) = {
                let aimd = lock(&self.aimd);
                let mut pace = lock(&self.requests);
                (pace.reserve(Instant::now()), pace.generation, aimd.epoch)
            };
            match slot {
                Ok(at) => {
                    if self.hold(at, generation).await {
                        break epoch;
                    }
                }
                Err(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = woken => {}
                    }
                }
            }
        };
        let seq = self.admitted.fetch_add(1, Ordering::Relaxed);
        if let Some(bucket) = read(&self.tokens) {
            bucket.take(tokens as f64).await;
        }
        Ticket {
            epoch,
            seq,
            at: Instant::now(),
        }
    }

    /// Wait for the slot at `at`: true when it comes, false when it is
    /// revoked first (take another).
    async fn hold(&self, at: Instant, generation: u64) -> bool {
        loop {
            // Registered before the check: a revocation after it wakes us.
            let woken = self.revoked.notified();
            if lock(&self.requests).generation != generation {
                return false;
            }
            if at <= Instant::now() {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = woken => {}
            }
        }
    }

    /// Learn from a reply's headers (any status). `status` is the reply's
    /// HTTP status; `ticket` its request's admission (None when it did not
    /// pass the limiter).
    pub fn observe(
        &self,
        headers: &HeaderMap,
        status: u16,
        retry_after: Option<Duration>,
        ticket: Option<Ticket>,
    ) {
        self.observe_at(headers, status, retry_after, ticket, Instant::now());
    }

    /// [`Limiter::observe`] at a given time (tests drive the clock).
    fn observe_at(
        &self,
        headers: &HeaderMap,
        status: u16,
        retry_after: Option<Duration>,
        ticket: Option<Ticket>,
        now: Instant,
    ) {
        // Many servers (vLLM, llama.cpp, TGI) send no rate-limit header: one
        // pass over the reply's few headers then saves the dozen lookups by
        // name below, which showed in profiles. Every name they look up
        // contains "ratelimit".
        let none = HeaderMap::new();
        let headers = if headers.keys().any(|k| k.as_str().contains("ratelimit")) {
            headers
        } else {
            &none
        };
        let rate_limited = status == 429;
        let epoch = ticket.map(|t| t.epoch);
        if let Some(t) = ticket {
            self.count(t, rate_limited, now);
        }
        if !self.told_rpm {
            if let Some(limit) = first_number(headers, REQUEST_LIMIT_HEADERS) {
                self.learn_ceiling(limit * LEARNED_HEADROOM);
            }
        }
        if !self.told_tpm {
            if let Some(limit) = first_number(headers, TOKEN_LIMIT_HEADERS) {
                self.set_learned(&self.tokens, limit * LEARNED_HEADROOM, TOKEN_BURST_SECS);
            }
        }
        for (told, slot, names, burst) in [
            (
                self.told_itpm,
                &self.input_tokens,
                INPUT_TOKEN_LIMIT_HEADERS,
                TOKEN_BURST_SECS,
            ),
            (
                self.told_otpm,
                &self.output_tokens,
                OUTPUT_TOKEN_LIMIT_HEADERS,
                OUTPUT_BURST_SECS,
            ),
        ] {
            if let Some(limit) = first_number(headers, names).filter(|_| !told) {
                self.set_learned(slot, limit * LEARNED_HEADROOM, burst);
            }
        }
        // A told --rpm is a ceiling, not a promise the server keeps: a key
        // shared with other jobs, or a limit lower than the user thought,
        // refuses some of it. 429s cut the pace under the ceiling as they do
        // a learned one, and success grows it back to the ceiling; without
        // this, a job told too much spent every retry on refusals.
        // A refusal within the known random share is no news of a limit:
        // its own retry waits what it asked; nobody else does.
        let mut limit = rate_limited;
        if rate_limited {
            limit = self.decrease(now, epoch);
        } else if (200..300).contains(&status) {
            self.increase(now);
            if let Some(t) = ticket {
                self.probe_answered(t.epoch);
            }
            // Going ahead of the pace on the server's word is for learned
            // paces only: a told one is the most the user allows.
            let remaining = first_number(headers, REMAINING_REQUEST_HEADERS);
            if let (false, Some(remaining), Some(t)) = (self.told_rpm, remaining, ticket) {
                self.credit(remaining, t.seq, now);
            }
        }
        // An exhausted window with no pace to keep us under it: wait for its
        // reset. Under a pace the slots already spread the requests, and
        // stopping everyone for a whole reset only wastes the limit.
        let paced = lock(&self.requests).per_minute.is_some();
        if !paced {
            let mut pause: Option<Duration> = None;
            for (remaining, reset) in EXHAUSTED_HEADERS {
                if first_number(headers, &[remaining]) == Some(0.0) {
                    if let Some(d) = header_str(headers, reset).and_then(parse_reset) {
                        pause = Some(pause.map_or(d, |p| p.max(d)));
                    }
                }
            }
            // A 429's Retry-After, when even the refusal taught no pace,
            // holds everyone back too: they would only be refused alike.
            if limit {
                pause = pause.max(retry_after);
            }
            if let Some(d) = pause.filter(|d| !d.is_zero()) {
                let until = now + d.min(Duration::from_secs(300));
                let mut p = lock(&self.pause_until);
                if p.is_none_or(|cur| cur < until) {
                    *p = Some(until);
                }
            }
        }
    }

    /// The server said `remaining` requests were left in its bucket when
    /// it admitted request `seq`: the ones admitted since are spent from
    /// it, the rest may go at once, off the pace. A server with a deep
    /// bucket (a minute's worth) then serves a job its whole burst instead
    /// of the bare rate; a shallow one leaves a credit of a few requests.
    /// A margin of two bursts is kept for requests the server has seen and
    /// we have not yet counted.
    fn credit(&self, remaining: f64, seq: u64, now: Instant) {
        let sent_since = self
            .admitted
            .load(Ordering::Relaxed)
            .saturating_sub(seq + 1);
        let mut pace = lock(&self.requests);
        let Some(per_minute) = pace.per_minute else {
            return; // nothing paces us yet: nothing to go ahead of
        };
        // Only a bucket deeper than two seconds of the pace is worth it: a
        // shallow one holds little more than the pace's own burst, and
        // requests that reach the server in another order than admitted
        // (a loaded client) spend the same credit twice.
        if remaining < per_minute / 30.0 {
            pace.credit = 0;
            return;
        }
        let margin = 2 * pace.burst as u64;
        let credit = (remaining as u64).saturating_sub(sent_since + margin);
        let credit = u32::try_from(credit).unwrap_or(u32::MAX);
        // A few slots' worth is what the pace's own burst allows anyway;
        // granting it would only churn the waiters.
        if credit <= pace.burst {
            pace.credit = 0;
            return;
        }
        let fresh = pace.credit == 0;
        pace.credit = credit;
        // The pace's own burst is spent by the credit: after it the
        // server's bucket is near empty.
        let period = Duration::from_secs_f64(60.0 / per_minute);
        let spent = now + period * pace.burst.saturating_sub(1);
        if fresh {
            // Requests waiting on slots take the credit instead: their
            // slots are revoked, and so taken off the schedule.
            pace.tat = spent;
            pace.generation += 1;
            drop(pace);
            self.revoked.notify_waiters();
        } else {
            pace.tat = pace.tat.max(spent);
        }
    }

    /// A success admitted in the current epoch: after a cut, that is the
    /// probe's answer, and the others may go.
    fn probe_answered(&self, epoch: u64) {
        if lock(&self.aimd).epoch != epoch {
            return;
        }
        let mut pace = lock(&self.requests);
        if matches!(pace.probe, Probe::Out { .. } | Probe::Next { .. }) {
            pace.probe = Probe::Off;
            drop(pace);
            self.revoked.notify_waiters();
        }
    }

    /// The server advertised its request limit: never pace above it.
    fn learn_ceiling(&self, per_minute: f64) {
        let mut aimd = lock(&self.aimd);
        let first = aimd.ceiling.is_none();
        if aimd.ceiling.is_some_and(|c| (c - per_minute).abs() < 0.5) {
            return;
        }
        aimd.ceiling = Some(per_minute);
        let mut pace = lock(&self.requests);
        let next = match pace.per_minute {
            Some(current) if !first => current.min(per_minute),
            _ => per_minute,
        };
        tracing::debug!(
            "pacing at {next:.0}/minute (the endpoint advertises {:.0}/minute)",
            per_minute / LEARNED_HEADROOM
        );
        // Slots handed out faster than the advertised limit would be
        // refused: revoke them. Slower ones (slow start's first slots) may
        // stay; the new pace spaces the rest.
        let now = Instant::now();
        match pace.per_minute.or_else(|| pace.ramp_rate(now)) {
            Some(current) if current > next => {
                pace.slow_to(next, now);
                drop(pace);
                self.revoked.notify_waiters();
            }
            _ => pace.set(next),
        }
        // Refusals of requests sent before we knew are no news.
        aimd.epoch += 1;
        aimd.tally = Tally::default();
    }

    fn set_learned(
        &self,
        slot: &RwLock<Option<Arc<TokenBucket>>>,
        per_minute: f64,
        burst_secs: f64,
    ) {
        let current = read(slot);
        // Rebuilding resets the limiter's state, so do it only on change.
        if current
            .as_ref()
            .is_some_and(|p| (p.per_minute - per_minute).abs() < 0.5)
        {
            return;
        }
        tracing::debug!("token pace {per_minute:.0}/minute (learned from the endpoint's replies)");
        if let Ok(mut w) = slot.write() {
            *w = Some(TokenBucket::per_minute(per_minute, burst_secs));
        }
    }

    /// A 429: cut the pace, once per congestion event. The new pace is what
    /// the server let through since the last cut (its real rate, when we
    /// sent more than it took), and at most a fifth below the old one.
    ///
    /// Returns whether the refusal was taken for a limit's, not for noise
    /// (see [`Cascade`]).
    fn decrease(&self, now: Instant, epoch: Option<u64>) -> bool {
        let mut aimd = lock(&self.aimd);
        if epoch.is_some_and(|e| e < aimd.epoch) {
            return aimd.noise == 0.0;
        }
        if aimd.noise > 0.0 && aimd.tally.within(aimd.noise) {
            return false;
        }
        let mut pace = lock(&self.requests);
        let goodput = aimd.goodput(now, aimd.last_decrease);
        // Refused during slow start: the ramp's rate is what was too much.
        let current = pace.per_minute.or_else(|| pace.ramp_rate(now));
        let next = match (current, goodput) {
            (Some(current), Some(g)) => (current * AIMD_DECREASE).min(g).max(current * DEEPEST_CUT),
            (Some(current), None) => current * AIMD_DECREASE,
            (None, Some(g)) => g,
            // Refused before anything was answered: nothing to measure yet;
            // the pause above holds everyone back meanwhile.
            (None, None) => return true,
        };
        let ended = std::mem::take(&mut aimd.tally);
        let from = pace.per_minute;
        // The epoch before a run's first cut is the steady pace it ended,
        // not one of the run's.
        let epoch = aimd.epoch;
        let cascade = match aimd.cascade.as_mut() {
            Some(c) => {
                c.epochs.push((epoch, ended));
                c
            }
            None => aimd.cascade.insert(Cascade {
                from,
                epochs: Vec::new(),
            }),
        };
        if let Some(noise) = cascade.noise() {
            let back = cascade.from;
            aimd.noise = aimd.noise.max(noise);
            aimd.cascade = None;
            aimd.epoch += 1;
            tracing::debug!(
                "429s at {:.0}% of replies whatever the pace: not a limit; pacing as before",
                noise * 100.0
            );
            pace.undo_to(back, now);
            drop(pace);
            self.revoked.notify_waiters();
            return false;
        }
        let next = aimd.ceiling.map_or(next, |c| next.min(c));
        tracing::debug!("429: pacing at {next:.0}/minute");
        pace.slow_to(next, now);
        // Four times what the last refusal took to come back (the time
        // varies with load), and a period.
        let rtt = aimd.refusal_rtt.unwrap_or(PROBE_WAIT_MIN);
        let period = Duration::from_secs_f64(60.0 / next.max(1.0));
        pace.probe = Probe::Next {
            wait: (rtt * 4).clamp(PROBE_WAIT_MIN, PROBE_WAIT_MAX) + period,
        };
        drop(pace);
        self.revoked.notify_waiters();
        aimd.epoch += 1;
        aimd.last_decrease = Some(now);
        aimd.last_increase = Some(now);
        true
    }

    /// Count a reply to a request admitted in the current epoch; a run of
    /// cuts ends once the pace holds for [`CASCADE_END`] replies. With
    /// noise known, a run that ends with refusals still at the noise share
    /// cut for nothing: the pace goes back to where it started.
    fn count(&self, ticket: Ticket, refused: bool, now: Instant) {
        let mut aimd = lock(&self.aimd);
        if refused {
            aimd.refusal_rtt = Some(now.saturating_duration_since(ticket.at));
        }
        if ticket.epoch != aimd.epoch {
            // An answer of an epoch the run of cuts has ended.
            let earlier = aimd.cascade.as_mut().and_then(|c| {
                c.epochs
                    .iter_mut()
                    .find(|(e, _)| *e == ticket.epoch)
                    .map(|(_, t)| t)
            });
            if let Some(t) = earlier {
                t.count(refused);
            }
            return;
        }
        let noise = aimd.noise;
        let tally = &mut aimd.tally;
        tally.count(refused);
        if tally.replies >= TALLY_KEPT {
            tally.replies /= 2;
            tally.refused /= 2;
        }
        if tally.replies >= CASCADE_END && tally.within(noise) {
            if let Some(run) = aimd.cascade.take().filter(|_| noise > 0.0) {
                lock(&self.requests).undo_to(run.from, now);
                self.revoked.notify_waiters();
            }
        }
    }

    /// A success: grow the pace slowly (a fraction per second since the
    /// last growth), never above an advertised limit.
    fn increase(&self, now: Instant) {
        let mut aimd = lock(&self.aimd);
        if aimd.answered.len() == ANSWERED_KEPT {
            aimd.answered.pop_front();
        }
        aimd.answered.push_back(now);
        let mut pace = lock(&self.requests);
        let Some(current) = pace.per_minute else {
            return;
        };
        let Some(last) = aimd.last_increase else {
            return;
        };
        let secs = now.duration_since(last).as_secs_f64();
        if secs < 0.1 {
            return;
        }
        aimd.last_increase = Some(now);
        let mut next = current * (1.0 + AIMD_GROWTH_PER_SEC * secs);
        if let Some(c) = aimd.ceiling {
            next = next.min(c);
        }
        if next > current {
            pace.set(next);
        }
    }

    pub fn state(&self) -> LimitState {
        LimitState {
            rpm: lock(&self.requests).per_minute,
            tpm: read(&self.tokens).map(|p| p.per_minute),
        }
    }
}

/// Seconds of OTPM the output bucket holds. Reservations stay out of the
/// bucket for as long as a request takes (seconds, for long answers), so it
/// must hold several seconds' worth or a few in-flight requests would block
/// all others; ten matches the simulator's default bucket depth.
const OUTPUT_BURST_SECS: f64 = 10.0;

/// An OTPM reservation taken by [`Limiter::admit_call`].
#[must_use = "settle the grant with the real output tokens, or drop it to refund all"]
pub struct OutputGrant {
    bucket: Option<Arc<TokenBucket>>,
    reserved: f64,
    /// The request's admission, to pass to [`Limiter::observe`].
    pub ticket: Ticket,
}

/// An attempt's admission: what its reply is news of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The limiter epoch (bumped on every cut) the request was admitted in.
    pub epoch: u64,
    /// Its place among all requests admitted.
    pub seq: u64,
    /// When it was admitted.
    pub at: Instant,
}

impl OutputGrant {
    /// The reply used `used` output tokens: keep those, give back the rest.
    pub fn settle(mut self, used: u64) {
        if let Some(bucket) = self.bucket.take() {
            bucket.give_back((self.reserved - used as f64).max(0.0));
        }
    }
}

impl Drop for OutputGrant {
    fn drop(&mut self) {
        if let Some(bucket) = self.bucket.take() {
            bucket.give_back(self.reserved);
        }
    }
}

/// A continuously refilled token bucket that can take capacity back: what
/// governor's GCRA cannot do. A request larger than the bucket waits until
/// it has refilled the whole request (a told limit is never exceeded), and
/// requests are served in turn, so small ones do not starve a large one.
/// The arithmetic is in [`BucketState`], which takes the time as an
/// argument so tests drive it with a fake clock.
pub struct TokenBucket {
    per_minute: f64,
    state: Mutex<BucketState>,
    /// Held by the request being served while it waits for its tokens.
    turn: tokio::sync::Mutex<()>,
}

impl TokenBucket {
    pub fn per_minute(per_minute: f64, burst_secs: f64) -> Arc<TokenBucket> {
        Arc::new(TokenBucket {
            per_minute,
            state: Mutex::new(BucketState::per_minute(
                per_minute,
                burst_secs,
                std::time::Instant::now(),
            )),
            turn: tokio::sync::Mutex::new(()),
        })
    }

    /// Wait, in turn, until `n` tokens are there and take them.
    pub async fn take(&self, n: f64) -> f64 {
        let _turn = self.turn.lock().await;
        loop {
            let wait = lock(&self.state).try_take(n, std::time::Instant::now());
            match wait {
                Ok(taken) => return taken,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    pub fn give_back(&self, n: f64) {
        lock(&self.state).give_back(n, std::time::Instant::now());
    }
}

/// The state of a [`TokenBucket`] at a given time.
#[derive(Debug, Clone)]
pub struct BucketState {
    /// Tokens per second.
    rate: f64,
    capacity: f64,
    level: f64,
    /// The request being served: when larger than the capacity, the level
    /// may rise to it.
    pending: f64,
    last: std::time::Instant,
}

impl BucketState {
    pub fn per_minute(per_minute: f64, burst_secs: f64, now: std::time::Instant) -> BucketState {
        let rate = per_minute.max(1.0) / 60.0;
        let capacity = (rate * burst_secs).max(1.0);
        BucketState {
            rate,
            capacity,
            level: capacity,
            pending: 0.0,
            last: now,
        }
    }

    /// The most the bucket holds now.
    fn room(&self) -> f64 {
        self.capacity.max(self.pending)
    }

    fn refill(&mut self, now: std::time::Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.level = (self.level + elapsed * self.rate).min(self.room());
    }

    /// Take `n` now, or say how long until it can be: until the bucket
    /// holds `n`, even when that is more than it holds when full.
    pub fn try_take(
        &mut self,
        n: f64,
        now: std::time::Instant,
    ) -> std::result::Result<f64, Duration> {
        let n = n.max(0.0);
        self.pending = n;
        self.refill(now);
        if self.level >= n {
            self.level -= n;
            self.pending = 0.0;
            Ok(n)
        } else {
            Err(Duration::from_secs_f64((n - self.level) / self.rate))
        }
    }

    /// Return unused tokens (never above what the bucket holds).
    pub fn give_back(&mut self, n: f64, now: std::time::Instant) {
        self.refill(now);
        self.level = (self.level + n.max(0.0)).min(self.room());
    }
}

/// About a tenth of a second's worth of requests: smooth, not bunched.
fn request_burst(per_minute: f64) -> u32 {
    ((per_minute / 600.0).ceil() as u32).max(1)
}

/// Seconds of TPM and ITPM a bucket holds: enough for any ordinary
/// request, and no bunching; a larger one waits for its whole size.
const TOKEN_BURST_SECS: f64 = 1.0;

const REQUEST_LIMIT_HEADERS: &[&str] = &[
    "x-ratelimit-limit-requests",
    "anthropic-ratelimit-requests-limit",
    "x-databricks-ratelimit-limit-requests",
];
const REMAINING_REQUEST_HEADERS: &[&str] = &[
    "x-ratelimit-remaining-requests",
    "anthropic-ratelimit-requests-remaining",
];
const TOKEN_LIMIT_HEADERS: &[&str] = &[
    "x-ratelimit-limit-tokens",
    "anthropic-ratelimit-tokens-limit",
    "x-databricks-ratelimit-limit-tokens",
];
/// Anthropic limits input and output tokens per minute apart.
const INPUT_TOKEN_LIMIT_HEADERS: &[&str] = &["anthropic-ratelimit-input-tokens-limit"];
const OUTPUT_TOKEN_LIMIT_HEADERS: &[&str] = &["anthropic-ratelimit-output-tokens-limit"];
const EXHAUSTED_HEADERS: [(&str, &str); 6] = [
    (
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    (
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
    ),
    (
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
    ),
    (
        "anthropic-ratelimit-input-tokens-remaining",
        "anthropic-ratelimit-input-tokens-reset",
    ),
    (
        "anthropic-ratelimit-output-tokens-remaining",
        "anthropic-ratelimit-output-tokens-reset",
    ),
];

fn first_number(headers: &HeaderMap, names: &[&str]) -> Option<f64> {
    names
        .iter()
        .find_map(|n| header_str(headers, n))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read(slot: &RwLock<Option<Arc<TokenBucket>>>) -> Option<Arc<TokenBucket>> {
    slot.read()
        .map(|g| g.clone())
        .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::provider::retry::tests::headers;

    #[test]
    fn every_header_read_names_ratelimit() {
        // observe() skips its lookups for replies with no such header.
        let pairs = EXHAUSTED_HEADERS.iter().flat_map(|(a, b)| [*a, *b]);
        let all = REQUEST_LIMIT_HEADERS
            .iter()
            .chain(REMAINING_REQUEST_HEADERS)
            .chain(TOKEN_LIMIT_HEADERS)
            .copied()
            .chain(pairs);
        for name in all {
            assert!(name.contains("ratelimit"), "{name}");
        }
    }

    fn at_epoch(epoch: u64) -> Ticket {
        Ticket {
            epoch,
            seq: 0,
            at: Instant::now(),
        }
    }

    #[test]
    fn learns_anthropics_input_and_output_token_limits_apart() {
        let l = Limiter::with_limits(&Limits {
            otpm: Some(600),
            ..Limits::default()
        });
        l.observe(
            &headers(&[
                ("anthropic-ratelimit-requests-limit", "50"),
                ("anthropic-ratelimit-input-tokens-limit", "40000"),
                ("anthropic-ratelimit-output-tokens-limit", "8000"),
            ]),
            200,
            None,
            None,
        );
        let per_minute = |slot| read(slot).map(|b| b.per_minute);
        assert_eq!(
            per_minute(&l.input_tokens),
            Some(40000.0 * LEARNED_HEADROOM)
        );
        // A told limit is kept.
        assert_eq!(per_minute(&l.output_tokens), Some(600.0));
        assert_eq!(l.state().rpm, Some(50.0 * LEARNED_HEADROOM));
        let learned = Limiter::new(None, None);
        learned.observe(
            &headers(&[("anthropic-ratelimit-output-tokens-limit", "8000")]),
            200,
            None,
            None,
        );
        assert_eq!(
            per_minute(&learned.output_tokens),
            Some(8000.0 * LEARNED_HEADROOM)
        );
    }

    #[test]
    fn learns_limits_from_headers() {
        let l = Limiter::new(None, None);
        assert_eq!(l.state(), LimitState::default());
        l.observe(
            &headers(&[
                ("x-ratelimit-limit-requests", "600"),
                ("x-ratelimit-limit-tokens", "60000"),
            ]),
            200,
            None,
            None,
        );
        let s = l.state();
        assert_eq!(s.rpm, Some(600.0 * LEARNED_HEADROOM));
        assert_eq!(s.tpm, Some(60000.0 * LEARNED_HEADROOM));
    }

    #[test]
    fn a_told_limit_is_a_ceiling_that_headers_never_move() {
        let l = Limiter::new(Some(100), None);
        // An advertised limit, above or below, leaves the told pace alone.
        for limit in ["600", "50"] {
            let h = headers(&[("x-ratelimit-limit-requests", limit)]);
            l.observe(&h, 200, None, None);
            assert_eq!(l.state().rpm, Some(100.0));
        }
        // A 429 cuts under it (the server refuses what we were told)...
        let t0 = Instant::now();
        let e = lock(&l.aimd).epoch;
        l.observe_at(&HeaderMap::new(), 429, None, Some(at_epoch(e)), t0);
        let cut = l.state().rpm.unwrap();
        assert!(cut < 100.0, "{cut}");
        // ...and successes grow it back to the told pace, never above.
        for i in 1..=600 {
            let t = t0 + Duration::from_millis(200 * i);
            l.observe_at(&HeaderMap::new(), 200, None, None, t);
        }
        assert_eq!(l.state().rpm, Some(100.0));
    }

    #[test]
    fn a_429_during_slow_start_paces_below_the_ramp() {
        let l = Limiter::new(None, None);
        let t0 = Instant::now();
        l.observe_at(&HeaderMap::new(), 429, None, Some(at_epoch(0)), t0);
        assert_eq!(l.state().rpm, Some(RAMP_START * AIMD_DECREASE));
    }

    #[test]
    fn a_429_without_headers_paces_at_what_was_answered_once_per_event() {
        let l = Limiter::new(None, None);
        lock(&l.requests).ramp = false; // past the slow start
        let none = HeaderMap::new();
        let t0 = Instant::now();
        // Refused before anything was answered: nothing to go on yet.
        l.observe_at(&none, 429, None, Some(at_epoch(0)), t0);
        assert_eq!(l.state().rpm, None);
        for _ in 0..10 {
            l.observe_at(&none, 200, None, Some(at_epoch(0)), t0);
        }
        let t1 = t0 + Duration::from_secs(1);
        l.observe_at(&none, 429, None, Some(at_epoch(0)), t1);
        let first = l.state().rpm.unwrap();
        assert!(
            (first - 600.0).abs() < 1.0,
            "10 answered in the last second: {first}"
        );
        // Refusals of requests admitted before the cut cut no further.
        l.observe_at(&none, 429, None, Some(at_epoch(0)), t1);
        assert_eq!(l.state().rpm, Some(first));
        // One admitted after it does.
        let later = lock(&l.aimd).epoch;
        l.observe_at(
            &none,
            429,
            None,
            Some(at_epoch(later)),
            t1 + Duration::from_secs(1),
        );
        assert!(l.state().rpm.unwrap() <= first * AIMD_DECREASE + 0.01);
    }

    /// Replies to `n` requests from `t0` on, sent at the limiter's pace
    /// (every 10 ms when it has none) in fake time, each admitted in its
    /// current epoch; `refused(now, pace)` says which are 429s
    /// (`Retry-After: 1`, no rate headers). Returns the cuts (epochs) it
    /// took, the refusals, and the time it got to.
    fn drive(
        l: &Limiter,
        t0: Instant,
        n: u64,
        mut refused: impl FnMut(Instant, Option<f64>) -> bool,
    ) -> (u64, u64, Instant) {
        let none = HeaderMap::new();
        let first = lock(&l.aimd).epoch;
        let (mut now, mut refusals) = (t0, 0);
        for i in 0..n {
            let pace = l.state().rpm;
            now += pace.map_or(Duration::from_millis(10), |p| {
                Duration::from_secs_f64(60.0 / p)
            });
            let ticket = Ticket {
                epoch: lock(&l.aimd).epoch,
                seq: i,
                at: now,
            };
            let no = refused(now, pace);
            refusals += u64::from(no);
            let status = if no { 429 } else { 200 };
            let after = Some(Duration::from_secs(1));
            l.observe_at(&none, status, after, Some(ticket), now);
        }
        (lock(&l.aimd).epoch - first, refusals, now)
    }

    /// One reply in twelve refused, whatever the pace (8%, the issue's
    /// random 429s).
    fn one_in_twelve() -> impl FnMut(Instant, Option<f64>) -> bool {
        let mut i = 0;
        move |_, _| {
            i += 1;
            i % 12 == 0
        }
    }

    #[test]
    fn random_429s_that_do_not_fall_with_the_pace_stop_cutting_it() {
        // Over 1,200 replies, a hundred refusals: every one cut the pace
        // before, each by a fifth or more, down to one a minute.
        for told in [None, Some(6_000)] {
            let l = Limiter::new(told, None);
            lock(&l.requests).ramp = false;
            let (cuts, _, end) = drive(&l, Instant::now(), 1_200, one_in_twelve());
            assert!(cuts <= 4, "{cuts} cuts");
            // Back to the pace the cuts started from.
            assert_eq!(l.state().rpm, told.map(f64::from));
            // Nobody is held back by a random 429's Retry-After.
            let pause = *lock(&l.pause_until);
            assert!(pause.is_none_or(|p| p < end), "{pause:?}");
        }
    }

    #[test]
    fn refusals_above_the_random_share_still_cut_until_they_are_back_to_it() {
        let l = Limiter::new(None, None);
        lock(&l.requests).set(6_000.0);
        let (_, _, t) = drive(&l, Instant::now(), 600, one_in_twelve());
        let before = l.state().rpm.unwrap();
        // The server now refuses half of what it gets (a limit behind the
        // noise, or a burst of it): far above the random share.
        let mut i = 0;
        let (cuts, _, t) = drive(&l, t, 40, |_, _| {
            i += 1;
            i % 2 == 0
        });
        assert!(cuts >= 1, "no cut");
        assert!(l.state().rpm.unwrap() < before);
        // Back to one in twelve: the cut was for nothing.
        drive(&l, t, 100, one_in_twelve());
        let after = l.state().rpm.unwrap();
        assert!(
            after >= before,
            "and the pace comes back: {after} < {before}"
        );
    }

    /// A server's bucket of `per_sec` a second, a second deep, full at
    /// `t0`: whether each request at `now` is refused.
    fn bucket(per_sec: f64, t0: Instant) -> impl FnMut(Instant, Option<f64>) -> bool {
        let (mut level, mut last) = (per_sec, t0);
        move |now, _| {
            level = (level + now.duration_since(last).as_secs_f64() * per_sec).min(per_sec);
            last = now;
            if level >= 1.0 {
                level -= 1.0;
                false
            } else {
                true
            }
        }
    }

    #[test]
    fn a_real_limit_is_still_followed_down() {
        // From 100 times a bucket's rate (10/s), and from twice it: cut
        // after cut down to it, whatever runs of cuts it takes, and few
        // refusals once there.
        for start in [60_000.0, 1_200.0] {
            let l = Limiter::new(None, None);
            lock(&l.requests).set(start);
            let t0 = Instant::now();
            let (_, _, t) = drive(&l, t0, 600, bucket(10.0, t0));
            let (_, refused, _) = drive(&l, t, 600, bucket(10.0, t0));
            let pace = l.state().rpm.unwrap();
            assert!(pace <= 600.0 * 1.1, "{start}: {pace}");
            assert!(refused <= 600 / 20, "{start}: {refused} of 600 refused");
        }
    }

    #[test]
    fn growth_never_passes_an_advertised_limit() {
        let l = Limiter::new(None, None);
        let limit = headers(&[("x-ratelimit-limit-requests", "3000")]);
        let t0 = Instant::now();
        l.observe_at(&limit, 429, None, Some(at_epoch(0)), t0);
        let ceiling = 3000.0 * LEARNED_HEADROOM;
        assert_eq!(l.state().rpm, Some(ceiling));
        // Refused in flight before the limit was known: no cut.
        l.observe_at(&limit, 429, None, Some(at_epoch(0)), t0);
        assert_eq!(l.state().rpm, Some(ceiling));
        // A fresh refusal cuts; a long run of successes grows back to the
        // ceiling and stays there.
        let e = lock(&l.aimd).epoch;
        l.observe_at(&limit, 429, None, Some(at_epoch(e)), t0);
        assert!(l.state().rpm.unwrap() < ceiling);
        for i in 1..=600 {
            let t = t0 + Duration::from_millis(200 * i);
            l.observe_at(&HeaderMap::new(), 200, None, None, t);
        }
        assert_eq!(l.state().rpm, Some(ceiling));
    }

    #[test]
    fn changing_the_pace_keeps_the_slots_already_taken() {
        let t0 = Instant::now();
        let mut pace = RequestPace::idle(t0);
        assert_eq!(pace.reserve(t0).unwrap(), t0, "no pace, no wait");
        // 600/min: one slot per 100 ms, burst 1.
        pace.set(600.0);
        let slots: Vec<_> = (0..5).map(|_| pace.reserve(t0).unwrap()).collect();
        assert_eq!(slots[4] - t0, Duration::from_millis(400));
        // A faster pace spaces the slots handed out from now on, after the
        // ones already taken: no fresh burst on top of them.
        pace.set(6000.0);
        let next = pace.reserve(t0).unwrap();
        assert!(next >= t0 + Duration::from_millis(410), "{:?}", next - t0);
    }

    #[tokio::test]
    async fn what_the_server_has_left_goes_at_once() {
        let l = Limiter::new(None, None);
        let first = l.admit(0).await;
        // 60/minute, 30 left: paced at 58/minute with 28 to spend at once
        // (a margin of two slots).
        let left = |n: &str| {
            headers(&[
                ("x-ratelimit-limit-requests", "60"),
                ("x-ratelimit-remaining-requests", n),
            ])
        };
        l.observe(&left("30"), 200, None, Some(first));
        let t = Instant::now();
        {
            let mut pace = lock(&l.requests);
            assert_eq!(pace.credit, 28);
            // The credit, then the pace's first slot (the margin's).
            for _ in 0..29 {
                assert_eq!(pace.reserve(t).unwrap(), t);
            }
            assert!(pace.reserve(t).unwrap() > t, "then the pace");
        }
        // The same news again, after 28 more were admitted: nothing left.
        for _ in 0..28 {
            l.admitted.fetch_add(1, Ordering::Relaxed);
        }
        l.observe(&left("30"), 200, None, Some(first));
        assert_eq!(lock(&l.requests).credit, 0);
        // Told limits keep their pace whatever the server says is left.
        let told = Limiter::new(Some(60), None);
        let ticket = told.admit(0).await;
        told.observe(&left("30"), 200, None, Some(ticket));
        assert_eq!(lock(&told.requests).credit, 0);
    }

    #[tokio::test]
    async fn after_a_cut_on_bare_429s_one_request_goes_first() {
        let l = Limiter::new(None, None);
        lock(&l.requests).set(6_000.0);
        let sent = l.admit(0).await;
        l.observe(&HeaderMap::new(), 429, None, Some(sent));
        let now = Instant::now();
        {
            let mut pace = lock(&l.requests);
            assert!(pace.reserve(now).is_ok(), "the probe");
            let until = pace.reserve(now).unwrap_err();
            assert!(until > now, "the others wait for its answer");
        }
        // It is answered: the others go, at the new pace.
        let probe = Ticket {
            epoch: lock(&l.aimd).epoch,
            seq: 1,
            at: now,
        };
        l.observe(&HeaderMap::new(), 200, None, Some(probe));
        assert!(lock(&l.requests).reserve(now).is_ok());
        // No answer in time (a slow refusal, a lost connection): one more
        // goes alone when the wait ends, the others still wait.
        let sent = l.admit(0).await;
        l.observe(&HeaderMap::new(), 429, None, Some(sent));
        let mut pace = lock(&l.requests);
        let _probe = pace.reserve(now).unwrap();
        let until = pace.reserve(now).unwrap_err();
        assert!(until <= now + PROBE_WAIT_MAX + Duration::from_secs(1));
        assert!(pace.reserve(until).is_ok(), "a second probe");
        assert!(pace.reserve(until).is_err());
    }

    #[test]
    fn slowing_down_revokes_the_slots_handed_out() {
        let t0 = Instant::now();
        let mut pace = RequestPace {
            per_minute: Some(6_000.0),
            ..RequestPace::idle(t0)
        };
        let slots: Vec<_> = (0..10).map(|_| pace.reserve(t0).unwrap()).collect();
        assert_eq!(slots[9] - t0, Duration::from_millis(90));
        pace.slow_to(600.0, t0);
        assert_eq!(pace.generation, 1, "the slots handed out are void");
        // A refusal says the server's bucket is empty: the next slot is a
        // whole period away, and the rest follow at the new pace.
        assert_eq!(pace.reserve(t0).unwrap() - t0, Duration::from_millis(100));
        assert_eq!(pace.reserve(t0).unwrap() - t0, Duration::from_millis(200));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_requests_take_new_slots_when_theirs_are_revoked() {
        let l = Arc::new(Limiter::new(None, None));
        lock(&l.requests).set(600.0); // a slot every 100 ms
        let gone = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let t0 = Instant::now();
        let waiting: Vec<_> = (0..20)
            .map(|_| {
                let (l, gone) = (l.clone(), gone.clone());
                tokio::spawn(async move {
                    l.admit(0).await;
                    gone.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect();
        // Waits for the waiters (on the other threads) to get there.
        let until = |f: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !f() {
                assert!(std::time::Instant::now() < deadline, "never happened");
                std::thread::yield_now();
            }
        };
        // Every request holds a slot: 20 of them at 100 ms.
        until(&|| lock(&l.requests).tat >= t0 + Duration::from_millis(1_900));
        // The server advertises 60/minute: those still waiting take slots
        // again, a second apart, instead of going out at the old pace.
        l.observe(
            &headers(&[("x-ratelimit-limit-requests", "60")]),
            429,
            None,
            Some(at_epoch(0)),
        );
        let cut = Instant::now();
        let still = 20 - gone.load(std::sync::atomic::Ordering::SeqCst);
        let period = Duration::from_secs_f64(60.0 / (60.0 * LEARNED_HEADROOM));
        until(&|| lock(&l.requests).tat >= cut + period * still as u32);
        assert!(gone.load(std::sync::atomic::Ordering::SeqCst) <= 20 - still + 1);
        for w in waiting {
            w.abort();
        }
    }

    /// Admissions in `secs` of fake time for requests reserving `reserve`
    /// output tokens and using `used`, each answered `latency` after it was
    /// admitted (the refund comes with the answer).
    fn admitted(otpm: f64, reserve: u64, used: u64, refund: bool, secs: u64) -> u64 {
        let t0 = std::time::Instant::now();
        let mut b = BucketState::per_minute(otpm, OUTPUT_BURST_SECS, t0);
        let latency = Duration::from_millis(500);
        let mut answers: VecDeque<std::time::Instant> = VecDeque::new();
        let mut now = t0;
        let mut n = 0;
        let end = t0 + Duration::from_secs(secs);
        while now < end {
            while answers.front().is_some_and(|t| *t <= now) {
                answers.pop_front();
                if refund {
                    b.give_back((reserve - used) as f64, now);
                }
            }
            match b.try_take(reserve as f64, now) {
                Ok(_) => {
                    n += 1;
                    answers.push_back(now + latency);
                }
                Err(wait) => {
                    now += wait
                        .min(Duration::from_millis(10))
                        .max(Duration::from_millis(1))
                }
            }
        }
        n
    }

    #[test]
    fn otpm_refunds_keep_throughput_near_the_limit() {
        // 6000 output tokens/min, max_tokens 100, real answers 10 tokens,
        // over ten fake minutes: the limit allows 6000 answers, less the
        // reservations still held at the end.
        let with_refund = admitted(6000.0, 100, 10, true, 600);
        let without = admitted(6000.0, 100, 10, false, 600);
        let ideal = 6000 * 10 / 10;
        assert!(
            with_refund as f64 >= ideal as f64 * 0.9 && with_refund <= ideal + 200,
            "{with_refund}"
        );
        // Without the refund, max_tokens alone sets the pace: 60/min + the burst.
        assert!(without <= 6000 * 10 / 100 + 20, "{without}");
    }

    #[test]
    fn bucket_waits_for_large_costs_and_takes_refunds() {
        let t0 = std::time::Instant::now();
        let mut b = BucketState::per_minute(600.0, 1.0, t0); // 10/s, capacity 10
        let wait = b.try_take(50.0, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(4), "all of it, not the capacity");
        let t1 = t0 + wait;
        assert_eq!(b.try_take(50.0, t1), Ok(50.0));
        let wait = b.try_take(5.0, t1).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        b.give_back(4.0, t1);
        assert_eq!(b.try_take(4.0, t1), Ok(4.0));
        b.give_back(100.0, t1);
        assert_eq!(b.level, 10.0, "refunds never exceed the capacity");
        assert_eq!(b.try_take(5.0, t1 + Duration::from_secs(1)), Ok(5.0));
    }

    /// Requests of `size` tokens admitted in `secs` of fake time by a
    /// bucket of `per_minute` with a second's burst, each taken as soon as
    /// the bucket allows.
    fn admitted_by_size(per_minute: f64, size: f64, secs: u64) -> u64 {
        let t0 = std::time::Instant::now();
        let mut b = BucketState::per_minute(per_minute, 1.0, t0);
        let (mut now, mut n) = (t0, 0);
        while now < t0 + Duration::from_secs(secs) {
            match b.try_take(size, now) {
                Ok(_) => n += 1,
                Err(wait) => now += wait.max(Duration::from_millis(1)),
            }
        }
        n
    }

    #[test]
    fn a_request_larger_than_a_seconds_refill_waits_for_all_of_it() {
        // --tpm 600 (10 a second) with 100-token requests: six a minute,
        // the first once the bucket holds its 100 tokens. Charged only
        // the second's burst, one went every second (60 a minute).
        assert_eq!(admitted_by_size(600.0, 100.0, 60), 6);
        // --itpm 6000 with 1,000-token prompts: six a minute too.
        assert_eq!(admitted_by_size(6000.0, 1000.0, 60), 6);
        // Requests within a second's refill are unchanged: 600 of 10.
        let small = admitted_by_size(6000.0, 10.0, 60);
        assert!((608..=610).contains(&small), "{small}");
    }

    #[tokio::test]
    async fn told_token_limits_hold_back_a_request_larger_than_their_burst() {
        use futures::FutureExt;
        let limits = |tpm, itpm| {
            Limiter::with_limits(&Limits {
                tpm,
                itpm,
                ..Limits::default()
            })
        };
        // A full bucket holds a second's worth (10 tokens at --tpm 600):
        // a 100-token request is not let through until it holds 100.
        let l = limits(Some(600), None);
        let mut big = Box::pin(l.admit(100));
        assert!(futures::poll!(&mut big).is_pending(), "--tpm exceeded");
        // Smaller ones wait their turn behind it (they would starve it).
        assert!(l.admit(5).now_or_never().is_none());
        let l = limits(None, Some(6000));
        assert!(
            l.admit_call(1000, 0).now_or_never().is_none(),
            "--itpm exceeded"
        );
        // Within the burst, no wait.
        assert!(limits(Some(600), None).admit(10).now_or_never().is_some());
    }

    #[tokio::test]
    async fn grants_refund_on_settle_and_on_drop() {
        let l = Limiter::with_limits(&Limits {
            otpm: Some(600),
            ..Limits::default()
        }); // capacity 100
        let level = |l: &Limiter| lock(&read(&l.output_tokens).unwrap().state).level;
        let g = l.admit_call(10, 80).await;
        assert!(level(&l) < 21.0);
        g.settle(30);
        assert!((level(&l) - 70.0).abs() < 1.0, "{}", level(&l));
        let g = l.admit_call(10, 50).await;
        drop(g);
        assert!(
            (level(&l) - 70.0).abs() < 1.0,
            "a dropped grant gives everything back"
        );
    }

    #[tokio::test]
    async fn exhausted_remaining_pauses_until_reset() {
        let l = Limiter::new(None, None);
        l.observe(
            &headers(&[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "2s"),
            ]),
            200,
            None,
            None,
        );
        let until = l.pause_until.lock().unwrap().unwrap();
        let d = until.duration_since(Instant::now());
        assert!(
            d > Duration::from_millis(1500) && d <= Duration::from_secs(2),
            "{d:?}"
        );
    }
}
