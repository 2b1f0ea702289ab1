//! How far and how fast an autoscaler moves its target, as upstream's HPA controller does once
//! the metrics have recommended a replica count (`normalizeDesiredReplicas` and
//! `normalizeDesiredReplicasWithBehaviors` in `pkg/controller/podautoscaler/horizontal.go`):
//!
//! - without `spec.behavior`: the highest recommendation of the last 5 minutes (scale-down
//!   stabilization), then at most `max(2 x current, 4)` replicas (`ScaleUpLimit`) and the
//!   `[minReplicas, maxReplicas]` bounds;
//! - with `spec.behavior`: its fields with upstream's defaults where unset (scale-up: no
//!   stabilization window, policies 4 pods and 100% per 15 s, `selectPolicy: Max`; scale-down: a
//!   300 s window, 100% per 15 s, `Max`); the recommendation is kept between the lowest one of
//!   the scale-up window and the highest one of the scale-down window, then the change is bounded
//!   by the policies (`Pods` or `Percent` per `periodSeconds`, counted from the replicas the
//!   target had at the start of each period, `selectPolicy` `Max`, `Min` or `Disabled`).
//!
//! Everything here is pure (the clock is an argument), so the arithmetic is unit-tested.

use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscalerBehavior};

/// upstream's `--horizontal-pod-autoscaler-downscale-stabilization` default.
pub const DOWNSCALE_STABILIZATION: Duration = Duration::from_secs(300);

/// Which of the policies' limits applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    /// The policy allowing the largest change (the default).
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No change in this direction.
    Disabled,
}

/// One `HPAScalingPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Pods { value: i32, period: Duration },
    Percent { value: i32, period: Duration },
}

impl Policy {
    fn period(&self) -> Duration {
        match self {
            Policy::Pods { period, .. } | Policy::Percent { period, .. } => *period,
        }
    }
}

/// `HPAScalingRules` with upstream's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub window: Duration,
    pub select: Select,
    pub policies: Vec<Policy>,
}

fn secs(s: i32) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

fn rules(given: Option<&HPAScalingRules>, window: i32, defaults: Vec<Policy>) -> Rules {
    let given = given.cloned().unwrap_or_default();
    let select = match given.select_policy.as_deref() {
        Some("Min") => Select::Min,
        Some("Disabled") => Select::Disabled,
        _ => Select::Max,
    };
    let policies = match given.policies {
        Some(p) if !p.is_empty() => p
            .iter()
            .map(|p| match p.type_.as_str() {
                "Pods" => Policy::Pods {
                    value: p.value,
                    period: secs(p.period_seconds),
                },
                _ => Policy::Percent {
                    value: p.value,
                    period: secs(p.period_seconds),
                },
            })
            .collect(),
        _ => defaults,
    };
    Rules {
        window: secs(given.stabilization_window_seconds.unwrap_or(window)),
        select,
        policies,
    }
}

/// upstream's defaults for `behavior.scaleUp`.
pub fn scale_up_rules(b: &HorizontalPodAutoscalerBehavior) -> Rules {
    rules(
        b.scale_up.as_ref(),
        0,
        vec![
            Policy::Pods {
                value: 4,
                period: secs(15),
            },
            Policy::Percent {
                value: 100,
                period: secs(15),
            },
        ],
    )
}

/// upstream's defaults for `behavior.scaleDown`.
pub fn scale_down_rules(b: &HorizontalPodAutoscalerBehavior) -> Rules {
    rules(
        b.scale_down.as_ref(),
        DOWNSCALE_STABILIZATION.as_secs() as i32,
        vec![Policy::Percent {
            value: 100,
            period: secs(15),
        }],
    )
}

/// What one autoscaler remembers between syncs: its recent recommendations and, with a
/// `behavior`, the scale changes it made (for the policies' periods).
#[derive(Debug, Default)]
pub struct History {
    pub recommendations: Vec<(Instant, i32)>,
    pub ups: Vec<(Instant, i32)>,
    pub downs: Vec<(Instant, i32)>,
}

/// The outcome: the replica count, and the `AbleToScale` and `ScalingLimited` reasons and
/// messages upstream sets on the way.
#[derive(Debug, PartialEq, Eq)]
pub struct Normalized {
    pub replicas: i32,
    pub able: (&'static str, &'static str),
    pub limited: (bool, &'static str, &'static str),
}

const READY: (&str, &str) = ("ReadyForNewScale", "recommended size matches current size");
const UP_STABILIZED: (&str, &str) = (
    "ScaleUpStabilized",
    "recent recommendations were lower than current one, applying the lowest recent recommendation",
);
const DOWN_STABILIZED: (&str, &str) = (
    "ScaleDownStabilized",
    "recent recommendations were higher than current one, applying the highest recent recommendation",
);
const WITHIN: (&str, &str) = (
    "DesiredWithinRange",
    "the desired count is within the acceptable range",
);
const TOO_MANY: (&str, &str) = (
    "TooManyReplicas",
    "the desired replica count is more than the maximum replica count",
);
const TOO_FEW: (&str, &str) = (
    "TooFewReplicas",
    "the desired replica count is less than the minimum replica count",
);
const UP_LIMIT: (&str, &str) = (
    "ScaleUpLimit",
    "the desired replica count is increasing faster than the maximum scale rate",
);
const DOWN_LIMIT: (&str, &str) = (
    "ScaleDownLimit",
    "the desired replica count is decreasing faster than the maximum scale rate",
);

fn limited(stabilized: i32, (replicas, why): (i32, (&'static str, &'static str))) -> Normalized {
    Normalized {
        replicas,
        able: READY,
        limited: (replicas != stabilized, why.0, why.1),
    }
}

/// Without `behavior`: the highest recommendation of the last 5 minutes, then upstream's fixed
/// scale-up rate and the bounds.
pub fn normalize(
    h: &mut History,
    now: Instant,
    current: i32,
    recommended: i32,
    min: i32,
    max: i32,
) -> Normalized {
    let mut stabilized = recommended;
    let mut reuse = None;
    for (i, (t, r)) in h.recommendations.iter().enumerate() {
        if now.saturating_duration_since(*t) < DOWNSCALE_STABILIZATION {
            stabilized = stabilized.max(*r);
        } else {
            reuse = Some(i);
        }
    }
    record(&mut h.recommendations, reuse, (now, recommended));
    let up_limit = (2 * current).max(4);
    let (ceiling, over) = if max > up_limit {
        (up_limit, UP_LIMIT)
    } else {
        (max, TOO_MANY)
    };
    let bounded = if stabilized < min {
        (min, TOO_FEW)
    } else if stabilized > ceiling {
        (ceiling, over)
    } else {
        (stabilized, WITHIN)
    };
    let mut n = limited(stabilized, bounded);
    if stabilized != recommended {
        n.able = DOWN_STABILIZED;
    }
    n
}

/// Keeps a list short as upstream does: an entry older than every window is overwritten.
fn record(list: &mut Vec<(Instant, i32)>, reuse: Option<usize>, entry: (Instant, i32)) {
    match reuse {
        Some(i) => list[i] = entry,
        None => list.push(entry),
    }
}

/// With `behavior`: the stabilization windows, then the policies' rates and the bounds.
#[allow(clippy::too_many_arguments)]
pub fn normalize_with_behavior(
    h: &mut History,
    now: Instant,
    up: &Rules,
    down: &Rules,
    current: i32,
    recommended: i32,
    min: i32,
    max: i32,
) -> Normalized {
    // The lowest recommendation of the scale-up window and the highest of the scale-down
    // window bound the current count.
    let mut up_rec = recommended;
    let mut down_rec = recommended;
    let mut reuse = None;
    for (i, (t, r)) in h.recommendations.iter().enumerate() {
        let age = now.saturating_duration_since(*t);
        if age < up.window {
            up_rec = up_rec.min(*r);
        }
        if age < down.window {
            down_rec = down_rec.max(*r);
        }
        if age > up.window && age > down.window {
            reuse = Some(i);
        }
    }
    let stabilized = current.max(up_rec).min(down_rec);
    record(&mut h.recommendations, reuse, (now, recommended));
    let able = if stabilized == recommended {
        READY
    } else if recommended >= current {
        UP_STABILIZED
    } else {
        DOWN_STABILIZED
    };
    let bounded = if stabilized > current {
        let limit = scale_up_limit(current, &h.ups, &h.downs, up, now).max(current);
        let (ceiling, over) = if max > limit {
            (limit, UP_LIMIT)
        } else {
            (max, TOO_MANY)
        };
        if stabilized > ceiling {
            (ceiling, over)
        } else {
            (stabilized, WITHIN)
        }
    } else if stabilized < current {
        let limit = scale_down_limit(current, &h.ups, &h.downs, down, now).min(current);
        let (floor, under) = if min < limit {
            (limit, DOWN_LIMIT)
        } else {
            (min, TOO_FEW)
        };
        if stabilized < floor {
            (floor, under)
        } else {
            (stabilized, WITHIN)
        }
    } else {
        (stabilized, WITHIN)
    };
    let mut n = limited(stabilized, bounded);
    n.able = able;
    n
}

/// The replicas changed within `period` before `now`.
fn changed_within(events: &[(Instant, i32)], period: Duration, now: Instant) -> i32 {
    events
        .iter()
        .filter(|(t, _)| now.saturating_duration_since(*t) < period)
        .map(|(_, n)| *n)
        .sum()
}

/// The most replicas the scale-up policies allow now.
pub fn scale_up_limit(
    current: i32,
    ups: &[(Instant, i32)],
    downs: &[(Instant, i32)],
    rules: &Rules,
    now: Instant,
) -> i32 {
    let (mut result, pick): (i32, fn(i32, i32) -> i32) = match rules.select {
        Select::Disabled => return current,
        Select::Min => (i32::MAX, i32::min),
        Select::Max => (i32::MIN, i32::max),
    };
    for p in &rules.policies {
        let start =
            current - changed_within(ups, p.period(), now) + changed_within(downs, p.period(), now);
        let proposed = match *p {
            Policy::Pods { value, .. } => start.saturating_add(value),
            // Rounded up, or a small target would never grow.
            Policy::Percent { value, .. } => {
                (start as f64 * (1.0 + value as f64 / 100.0)).ceil() as i32
            }
        };
        result = pick(result, proposed);
    }
    result
}

/// The fewest replicas the scale-down policies allow now.
pub fn scale_down_limit(
    current: i32,
    ups: &[(Instant, i32)],
    downs: &[(Instant, i32)],
    rules: &Rules,
    now: Instant,
) -> i32 {
    // For a scale-down the smallest change is the highest count.
    let (mut result, pick): (i32, fn(i32, i32) -> i32) = match rules.select {
        Select::Disabled => return current,
        Select::Min => (i32::MIN, i32::max),
        Select::Max => (i32::MAX, i32::min),
    };
    for p in &rules.policies {
        let start =
            current - changed_within(ups, p.period(), now) + changed_within(downs, p.period(), now);
        let proposed = match *p {
            Policy::Pods { value, .. } => start - value,
            Policy::Percent { value, .. } => (start as f64 * (1.0 - value as f64 / 100.0)) as i32,
        };
        result = pick(result, proposed);
    }
    result
}

/// Remembers a scale change made under `behavior` (for the policies' periods); entries older
/// than the longest period of their direction are overwritten.
pub fn record_scale(h: &mut History, up: &Rules, down: &Rules, now: Instant, from: i32, to: i32) {
    let (list, rules, change) = if to > from {
        (&mut h.ups, up, to - from)
    } else if to < from {
        (&mut h.downs, down, from - to)
    } else {
        return;
    };
    let longest = rules
        .policies
        .iter()
        .map(|p| p.period())
        .max()
        .unwrap_or_default();
    let reuse = list
        .iter()
        .position(|(t, _)| now.saturating_duration_since(*t) > longest);
    record(list, reuse, (now, change));
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::autoscaling::v2::HPAScalingPolicy;

    fn behavior(up: Option<HPAScalingRules>, down: Option<HPAScalingRules>) -> (Rules, Rules) {
        let b = HorizontalPodAutoscalerBehavior {
            scale_up: up,
            scale_down: down,
        };
        (scale_up_rules(&b), scale_down_rules(&b))
    }

    fn policy(type_: &str, value: i32, period_seconds: i32) -> HPAScalingPolicy {
        HPAScalingPolicy {
            type_: type_.into(),
            value,
            period_seconds,
        }
    }

    fn rules_of(policies: Vec<HPAScalingPolicy>, select: &str, window: i32) -> HPAScalingRules {
        HPAScalingRules {
            policies: Some(policies),
            select_policy: Some(select.into()),
            stabilization_window_seconds: Some(window),
            ..Default::default()
        }
    }

    #[test]
    fn upstream_defaults() {
        let (up, down) = behavior(None, None);
        assert_eq!(up.window, Duration::ZERO);
        assert_eq!(up.select, Select::Max);
        assert_eq!(
            up.policies,
            vec![
                Policy::Pods {
                    value: 4,
                    period: secs(15)
                },
                Policy::Percent {
                    value: 100,
                    period: secs(15)
                }
            ]
        );
        assert_eq!(down.window, Duration::from_secs(300));
        assert_eq!(
            down.policies,
            vec![Policy::Percent {
                value: 100,
                period: secs(15)
            }]
        );
        // A scaleDown with only policies keeps the default window.
        let (_, down) = behavior(
            None,
            Some(HPAScalingRules {
                policies: Some(vec![policy("Pods", 1, 60)]),
                ..Default::default()
            }),
        );
        assert_eq!(down.window, Duration::from_secs(300));
    }

    #[test]
    fn default_scale_up_is_the_larger_of_4_pods_and_100_percent() {
        let (up, down) = behavior(None, None);
        let now = Instant::now();
        for (current, want) in [(1, 5), (3, 7), (4, 8), (10, 20)] {
            let mut h = History::default();
            let n = normalize_with_behavior(&mut h, now, &up, &down, current, 100, 1, 1000);
            assert_eq!(n.replicas, want, "from {current}");
            assert_eq!(n.limited, (true, UP_LIMIT.0, UP_LIMIT.1));
            assert_eq!(n.able, READY);
        }
        // maxReplicas below the rate limit: TooManyReplicas.
        let mut h = History::default();
        let n = normalize_with_behavior(&mut h, now, &up, &down, 10, 100, 1, 15);
        assert_eq!(n.replicas, 15);
        assert_eq!(n.limited.1, "TooManyReplicas");
    }

    /// The example of upstream's documentation: scale-down by at most 4 pods or 10% a minute,
    /// whichever is more; from 80 replicas 8 go, then from 72 (10% rounds the result down, so 8
    /// again), and below 40 replicas 4 at a time.
    #[test]
    fn documented_scale_down_example() {
        let (up, down) = behavior(
            None,
            Some(rules_of(
                vec![policy("Pods", 4, 60), policy("Percent", 10, 60)],
                "Max",
                0,
            )),
        );
        let t0 = Instant::now();
        let mut h = History::default();
        let mut current = 80;
        let mut seen = vec![];
        for step in 0..20 {
            // One sync a minute: each period starts afresh.
            let now = t0 + Duration::from_secs(61 * step);
            let n = normalize_with_behavior(&mut h, now, &up, &down, current, 10, 1, 100);
            record_scale(&mut h, &up, &down, now, current, n.replicas);
            current = n.replicas;
            seen.push(current);
            if current == 10 {
                break;
            }
        }
        assert_eq!(seen[..3], [72, 64, 57]);
        // Under 40 the Pods policy allows more than 10%.
        let i = seen.iter().position(|r| *r < 40).unwrap();
        assert_eq!(seen[i + 1], seen[i] - 4, "{seen:?}");
        assert_eq!(*seen.last().unwrap(), 10, "{seen:?}");
    }

    #[test]
    fn changes_within_a_period_count_against_it() {
        let (up, down) = behavior(
            Some(rules_of(vec![policy("Pods", 4, 60)], "Max", 0)),
            Some(rules_of(vec![policy("Pods", 2, 60)], "Max", 0)),
        );
        let t0 = Instant::now();
        let mut h = History::default();
        let n = normalize_with_behavior(&mut h, t0, &up, &down, 2, 20, 1, 50);
        assert_eq!(n.replicas, 6);
        record_scale(&mut h, &up, &down, t0, 2, 6);
        // 15 s later the period that began at 2 replicas still allows only 2 + 4.
        let t1 = t0 + Duration::from_secs(15);
        let n = normalize_with_behavior(&mut h, t1, &up, &down, 6, 20, 1, 50);
        assert_eq!(n.replicas, 6);
        assert_eq!(n.limited, (true, UP_LIMIT.0, UP_LIMIT.1));
        // After the period, 4 more.
        let t2 = t0 + Duration::from_secs(61);
        let n = normalize_with_behavior(&mut h, t2, &up, &down, 6, 20, 1, 50);
        assert_eq!(n.replicas, 10);
        record_scale(&mut h, &up, &down, t2, 6, 10);
        // A scale-down in the same period counts from the period's start, as upstream: 10
        // less the 4 added = 6, less 2 = 4.
        let t3 = t2 + Duration::from_secs(5);
        let n = normalize_with_behavior(&mut h, t3, &up, &down, 10, 1, 1, 50);
        assert_eq!(n.replicas, 4);
        assert_eq!(n.limited, (true, DOWN_LIMIT.0, DOWN_LIMIT.1));
        record_scale(&mut h, &up, &down, t3, 10, 4);
        // Within the period nothing more goes.
        let n = normalize_with_behavior(&mut h, t3 + secs(1), &up, &down, 4, 1, 1, 50);
        assert_eq!(n.replicas, 4);
    }

    #[test]
    fn select_policy_min_and_disabled() {
        let policies = vec![policy("Pods", 4, 60), policy("Percent", 50, 60)];
        let now = Instant::now();
        let (up, down) = behavior(
            Some(rules_of(policies.clone(), "Min", 0)),
            Some(rules_of(policies.clone(), "Min", 0)),
        );
        let mut h = History::default();
        // Up from 20: Pods allows 24, Percent 30; Min picks 24.
        assert_eq!(
            normalize_with_behavior(&mut h, now, &up, &down, 20, 100, 1, 100).replicas,
            24
        );
        // Down from 20: Pods allows 16, Percent 10; Min (the smaller change) picks 16.
        let mut h = History::default();
        assert_eq!(
            normalize_with_behavior(&mut h, now, &up, &down, 20, 1, 1, 100).replicas,
            16
        );
        let (up, down) = behavior(
            Some(rules_of(policies.clone(), "Disabled", 0)),
            Some(rules_of(policies, "Disabled", 0)),
        );
        let mut h = History::default();
        let n = normalize_with_behavior(&mut h, now, &up, &down, 20, 100, 1, 100);
        assert_eq!(n.replicas, 20);
        assert_eq!(n.limited, (true, UP_LIMIT.0, UP_LIMIT.1));
        let mut h = History::default();
        let n = normalize_with_behavior(&mut h, now, &up, &down, 20, 1, 1, 100);
        assert_eq!(n.replicas, 20);
        assert_eq!(n.limited, (true, DOWN_LIMIT.0, DOWN_LIMIT.1));
    }

    #[test]
    fn percent_scale_up_rounds_up() {
        let (up, down) = behavior(
            Some(rules_of(vec![policy("Percent", 10, 60)], "Max", 0)),
            None,
        );
        let mut h = History::default();
        // 10% of 3 is 0.3: one more pod, not none.
        let n = normalize_with_behavior(&mut h, Instant::now(), &up, &down, 3, 10, 1, 10);
        assert_eq!(n.replicas, 4);
    }

    #[test]
    fn stabilization_windows() {
        let (up, down) = behavior(
            Some(rules_of(vec![policy("Percent", 900, 15)], "Max", 60)),
            None,
        );
        let t0 = Instant::now();
        let mut h = History::default();
        // The first recommendation of 3 (current 5) is stabilized by itself: a scale-down to 3
        // at once would need the window's highest, which is 3.
        let n = normalize_with_behavior(&mut h, t0, &up, &down, 5, 3, 1, 100);
        assert_eq!(n.replicas, 3);
        // A later recommendation of 1 within 300 s: the highest recent one (3) wins.
        let n = normalize_with_behavior(&mut h, t0 + secs(30), &up, &down, 3, 1, 1, 100);
        assert_eq!(n.replicas, 3);
        assert_eq!(n.able, DOWN_STABILIZED);
        assert!(!n.limited.0);
        // Scale-up with a 60 s window: the lowest recent recommendation (1, 30 s old) holds it.
        let n = normalize_with_behavior(&mut h, t0 + secs(60), &up, &down, 3, 8, 1, 100);
        assert_eq!(n.replicas, 3);
        assert_eq!(n.able, UP_STABILIZED);
        // Once the low ones are out of the scale-up window, up to the lowest of the last 60 s.
        let n = normalize_with_behavior(&mut h, t0 + secs(100), &up, &down, 3, 9, 1, 100);
        assert_eq!(n.replicas, 8);
        // After 300 s with nothing lower, the scale-down window's highest is what was
        // recommended in the last 300 s.
        let n = normalize_with_behavior(&mut h, t0 + secs(350), &up, &down, 8, 2, 1, 100);
        assert_eq!(n.replicas, 8);
        let n = normalize_with_behavior(&mut h, t0 + secs(730), &up, &down, 8, 2, 1, 100);
        assert_eq!(n.replicas, 2);
    }

    #[test]
    fn without_behavior() {
        let t0 = Instant::now();
        let mut h = History::default();
        // Up: at most max(2 x current, 4).
        let n = normalize(&mut h, t0, 1, 10, 1, 20);
        assert_eq!(n.replicas, 4);
        assert_eq!(n.limited, (true, UP_LIMIT.0, UP_LIMIT.1));
        let mut h = History::default();
        let n = normalize(&mut h, t0, 6, 30, 1, 20);
        assert_eq!(n.replicas, 12);
        let mut h = History::default();
        let n = normalize(&mut h, t0, 1, 3, 1, 3);
        assert_eq!(n.replicas, 3);
        assert_eq!(n.limited, (false, "DesiredWithinRange", WITHIN.1));
        let n = normalize(&mut h, t0, 1, 10, 1, 3);
        assert_eq!(n.limited, (true, "TooManyReplicas", TOO_MANY.1));
        // Down: the highest recommendation of the last 5 minutes.
        let mut h = History::default();
        normalize(&mut h, t0, 6, 6, 1, 20);
        let n = normalize(&mut h, t0 + secs(60), 6, 2, 1, 20);
        assert_eq!(n.replicas, 6);
        assert_eq!(n.able, DOWN_STABILIZED);
        let n = normalize(&mut h, t0 + secs(400), 6, 2, 2, 20);
        assert_eq!(n.replicas, 2);
        assert_eq!(n.able, READY);
        let n = normalize(&mut History::default(), t0, 6, 1, 2, 20);
        assert_eq!(n.replicas, 2);
        assert_eq!(n.limited, (true, "TooFewReplicas", TOO_FEW.1));
    }
}
