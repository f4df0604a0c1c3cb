//! Percentiles, pooled rounds and units.

use std::time::Duration;

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub(crate) fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    percentile(&v, 0.5)
}

pub(crate) struct Latencies {
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) per_sec: f64,
}

/// Samples and wall time gathered over several rounds.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) samples: Vec<Duration>,
    wall: Duration,
}

impl Tally {
    pub(crate) fn add(&mut self, (samples, wall): (Vec<Duration>, Duration)) {
        self.samples.extend(samples);
        self.wall += wall;
    }

    pub(crate) fn summary(self) -> Latencies {
        let mut samples = self.samples;
        samples.sort();
        Latencies {
            p50: percentile(&samples, 0.5),
            p99: percentile(&samples, 0.99),
            per_sec: samples.len() as f64 / self.wall.as_secs_f64(),
        }
    }
}

pub(crate) fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
