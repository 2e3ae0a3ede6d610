//! Recognising the series a model server exports, from its Prometheus text exposition: which
//! counter counts requests, how its errors are told apart (a status label of that counter, or a
//! counter of their own), which histogram is the latency, which counter carries the predicted
//! class, and which label selects the route. Pure: text in, selectors or the reasons why not out.
//!
//! Recognition goes by the shapes libraries really produce (names, types, labels and their
//! values), never by a single guess: when two series fit a signal equally, or none does, the
//! signal is not recognised and the answer lists what was seen and what is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The route `canary init` selects by default: where the model answers.
pub const DEFAULT_ROUTE: &str = "/predict";

/// Metric name prefixes of language runtimes and exporters themselves (never a model signal).
const RUNTIME_PREFIXES: &[&str] = &["process_", "python_", "go_", "promhttp_", "jvm_", "nodejs_"];
/// Label names that hold the route (path template) of a request.
const ROUTE_LABELS: &[&str] = &[
    "route",
    "handler",
    "path",
    "endpoint",
    "url",
    "uri",
    "url_rule",
    "http_route",
];
/// Label names that hold an HTTP status.
const STATUS_LABELS: &[&str] = &[
    "status",
    "code",
    "status_code",
    "http_status",
    "response_code",
    "http_status_code",
    "status_class",
];
/// Label names that commonly hold a predicted class.
const CLASS_LABELS: &[&str] = &[
    "class",
    "label",
    "prediction",
    "predicted",
    "predicted_class",
    "predicted_label",
    "category",
    "outcome",
];
/// Words in a counter's name that say it counts predictions.
const PREDICTION_WORDS: &[&str] = &[
    "predict",
    "inference",
    "class",
    "label",
    "sentiment",
    "output",
];
/// Labels that are never the class of a prediction.
const NOT_CLASS_LABELS: &[&str] = &[
    "method",
    "le",
    "quantile",
    "instance",
    "job",
    "model",
    "model_name",
];

/// What kind of metric a family is, as far as recognition cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Histogram,
}

/// One metric family of an exposition: its type, and every label with the values seen.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Family {
    pub kind: Option<Kind>,
    /// Samples seen (a family can be declared by `# TYPE` with no series yet).
    pub series: usize,
    pub labels: BTreeMap<String, BTreeSet<String>>,
}

impl Family {
    fn values(&self, label: &str) -> Option<&BTreeSet<String>> {
        self.labels.get(label)
    }

    fn has_value(&self, label: &str, value: &str) -> bool {
        self.values(label).is_some_and(|v| v.contains(value))
    }
}

/// The metric families of one or more expositions (counters and histograms only; runtime series
/// and `_created` timestamps left out), by the name a selector uses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalogue {
    pub families: BTreeMap<String, Family>,
}

/// A text that is not a Prometheus exposition at all.
#[derive(Debug, thiserror::Error)]
#[error("not a Prometheus text exposition: {0}")]
pub struct NotAnExposition(String);

fn is_runtime(name: &str) -> bool {
    RUNTIME_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The `# TYPE name kind` declaration on a comment line.
fn declaration(line: &str) -> Option<(&str, &str)> {
    let mut words = line.strip_prefix('#')?.split_whitespace();
    (words.next()? == "TYPE").then_some(())?;
    Some((words.next()?, words.next()?))
}

impl Catalogue {
    /// Reads one exposition (its sample lines with the daemon's own reader).
    pub fn parse(text: &str) -> Result<Catalogue, NotAnExposition> {
        let mut declared: BTreeMap<&str, &str> = BTreeMap::new();
        let mut samples = Vec::new();
        let mut unreadable = 0usize;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if line.starts_with('#') {
                if let Some((name, kind)) = declaration(line) {
                    declared.insert(name, kind);
                }
            } else if let Some(sample) = crate::upstream::read_sample(line) {
                samples.push(sample);
            } else {
                unreadable += 1;
            }
        }
        if samples.is_empty() && declared.is_empty() && unreadable > 0 {
            return Err(NotAnExposition(format!(
                "none of its {unreadable} lines is a sample or a # TYPE line"
            )));
        }
        let is = |name: &str, kind: &str| declared.get(name) == Some(&kind);
        let mut c = Catalogue::default();
        for s in &samples {
            let name = s.name;
            let base = |suffix: &str| name.strip_suffix(suffix).unwrap_or(name);
            let has_le = s.labels.iter().any(|(k, _)| *k == "le");
            let (family, kind) = if is(name, "counter") || is(base("_total"), "counter") {
                (name, Kind::Counter)
            } else if ["_bucket", "_sum", "_count"]
                .iter()
                .any(|x| name.ends_with(x) && is(base(x), "histogram"))
            {
                let x = ["_bucket", "_sum", "_count"]
                    .into_iter()
                    .find(|x| name.ends_with(x))
                    .unwrap_or_default();
                (base(x), Kind::Histogram)
            } else if declared.contains_key(name) {
                continue;
            } else if name.ends_with("_total") {
                // Untyped, named as a counter.
                (name, Kind::Counter)
            } else if name.ends_with("_bucket") && has_le {
                (base("_bucket"), Kind::Histogram)
            } else {
                continue;
            };
            if is_runtime(family) || family.ends_with("_created") {
                continue;
            }
            let f = c.families.entry(family.to_string()).or_default();
            f.kind = Some(kind);
            // One series per counter sample, one per histogram (its `+Inf` bucket).
            let inf_bucket = name.ends_with("_bucket")
                && s.labels.iter().any(|(k, v)| *k == "le" && v == "+Inf");
            if kind == Kind::Counter || inf_bucket {
                f.series += 1;
            }
            for (k, v) in &s.labels {
                if *k != "le" || kind != Kind::Histogram {
                    f.labels
                        .entry((*k).to_string())
                        .or_default()
                        .insert(v.to_string());
                }
            }
        }
        // Declared families without any series yet (a counter whose labelled children appear
        // with the first request, as prometheus_client does).
        for (name, kind) in declared {
            let kind = match kind {
                "counter" => Kind::Counter,
                "histogram" => Kind::Histogram,
                _ => continue,
            };
            if is_runtime(name)
                || name.ends_with("_created")
                || c.families.contains_key(name)
                || c.families.contains_key(&format!("{name}_total"))
            {
                continue;
            }
            c.families.insert(
                name.to_string(),
                Family {
                    kind: Some(kind),
                    ..Family::default()
                },
            );
        }
        Ok(c)
    }

    /// Adds another backend's families: label values are united.
    pub fn merge(&mut self, other: &Catalogue) {
        for (name, f) in &other.families {
            let mine = self.families.entry(name.clone()).or_default();
            mine.kind = mine.kind.or(f.kind);
            mine.series += f.series;
            for (k, vs) in &f.labels {
                mine.labels
                    .entry(k.clone())
                    .or_default()
                    .extend(vs.iter().cloned());
            }
        }
    }

    fn of_kind(&self, kind: Kind) -> impl Iterator<Item = (&String, &Family)> {
        self.families
            .iter()
            .filter(move |(_, f)| f.kind == Some(kind))
    }

    /// `name{label, ...}` of every family of `kind`, for messages.
    fn shown(&self, kind: Kind) -> Vec<String> {
        self.of_kind(kind).map(|(n, f)| show(n, f)).collect()
    }
}

fn show(name: &str, f: &Family) -> String {
    let mut out = name.to_string();
    if !f.labels.is_empty() {
        let labels: Vec<String> = f
            .labels
            .iter()
            .map(|(k, vs)| {
                let mut values: Vec<&str> = vs.iter().map(String::as_str).take(6).collect();
                if vs.len() > 6 {
                    values.push("...");
                }
                format!("{k}={}", values.join("|"))
            })
            .collect();
        out = format!("{out}{{{}}}", labels.join(", "));
    }
    if f.series == 0 {
        out.push_str(" (declared, no series yet)");
    }
    out
}

/// How a matcher compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Equal,
    Matches,
}

/// A metric with label matchers: the text of a `[services.upstream]` selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pick {
    pub metric: String,
    pub matchers: Vec<(String, Op, String)>,
}

impl Pick {
    fn new(metric: &str) -> Pick {
        Pick {
            metric: metric.to_string(),
            matchers: Vec::new(),
        }
    }

    fn with(mut self, label: &str, op: Op, value: &str) -> Pick {
        self.matchers
            .push((label.to_string(), op, value.to_string()));
        self
    }
}

impl fmt::Display for Pick {
    /// The canonical selector text: `metric{label="value",label=~"regex"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.metric)?;
        if self.matchers.is_empty() {
            return Ok(());
        }
        f.write_str("{")?;
        for (i, (label, op, value)) in self.matchers.iter().enumerate() {
            let op = match op {
                Op::Equal => "=",
                Op::Matches => "=~",
            };
            let value = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            write!(f, "{}{label}{op}\"{value}\"", if i > 0 { "," } else { "" })?;
        }
        f.write_str("}")
    }
}

/// The series found for every signal, and how each was recognised.
#[derive(Clone, Debug, PartialEq)]
pub struct Recognised {
    pub requests: Pick,
    pub errors: Pick,
    pub latency: Pick,
    pub predictions: Pick,
    pub prediction_label: String,
    /// The label of the predictions counter that holds the model version, if any.
    pub version_label: Option<String>,
    /// One line per signal: what was chosen and why (printed as comments).
    pub notes: Vec<String>,
}

/// A signal that could not be recognised: what was seen, and what is needed instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unrecognised {
    /// `requests`, `errors`, `latency`, `predictions` or `backends`.
    pub signal: &'static str,
    pub saw: Vec<String>,
    pub needs: String,
}

impl fmt::Display for Unrecognised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {}", self.signal, self.needs)?;
        if self.saw.is_empty() {
            writeln!(f, "    saw: nothing that fits")?;
        }
        for s in &self.saw {
            writeln!(f, "    saw: {s}")?;
        }
        Ok(())
    }
}

/// Every signal that could not be recognised.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_unrecognised(.0))]
pub struct NotRecognised(pub Vec<Unrecognised>);

fn render_unrecognised(problems: &[Unrecognised]) -> String {
    let mut out = String::new();
    for p in problems {
        out.push_str(&p.to_string());
    }
    out.trim_end().to_string()
}

fn contains_any(name: &str, words: &[&str]) -> bool {
    words.iter().any(|w| name.contains(w))
}

fn is_status_code(v: &str) -> bool {
    v.len() == 3
        && v.as_bytes()[0].is_ascii_digit()
        && (b'1'..=b'5').contains(&v.as_bytes()[0])
        && v.bytes().all(|b| b.is_ascii_digit())
}

fn is_status_class(v: &str) -> bool {
    v.len() == 3 && (b'1'..=b'5').contains(&v.as_bytes()[0]) && v[1..].eq_ignore_ascii_case("xx")
}

/// The route label of a family: a known route label name, else a label whose values are paths.
fn route_label(f: &Family) -> Option<&str> {
    ROUTE_LABELS
        .iter()
        .find(|l| f.labels.contains_key(**l))
        .copied()
        .or_else(|| {
            f.labels
                .iter()
                .find(|(_, vs)| !vs.is_empty() && vs.iter().all(|v| v.starts_with('/')))
                .map(|(k, _)| k.as_str())
        })
}

/// The status label of a family and the matcher that selects 5xx answers.
fn status_matcher(f: &Family) -> Option<(&str, Op, &'static str)> {
    let (label, values) = STATUS_LABELS
        .iter()
        .find_map(|l| f.labels.get_key_value(*l))
        .or_else(|| {
            f.labels.iter().find(|(_, vs)| {
                !vs.is_empty() && vs.iter().all(|v| is_status_code(v) || is_status_class(v))
            })
        })?;
    if values.iter().all(|v| is_status_class(v)) {
        Some((label.as_str(), Op::Equal, "5xx"))
    } else if values
        .iter()
        .all(|v| is_status_code(v) || is_status_class(v))
    {
        Some((label.as_str(), Op::Matches, "5.."))
    } else {
        None
    }
}

/// Recognises every signal in `catalogue` (the families of all backends, merged). `route` is
/// the path whose requests count (`/predict`), where the series carry a route label.
pub fn recognise(catalogue: &Catalogue, route: &str) -> Result<Recognised, NotRecognised> {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let requests = requests(catalogue, route, &mut notes).map_err(|p| problems.push(p));
    let (errors, latency, predictions) = match &requests {
        Ok((name, route_matcher)) => {
            let errors = errors(catalogue, name, route_matcher.as_ref(), &mut notes)
                .map_err(|p| problems.push(p));
            let latency = latency(catalogue, route, route_matcher.is_some(), &mut notes)
                .map_err(|p| problems.push(p));
            let exclude: Vec<&str> = [
                Some(name.as_str()),
                errors.as_ref().ok().map(|e| e.metric.as_str()),
            ]
            .into_iter()
            .flatten()
            .collect();
            let predictions =
                predictions(catalogue, &exclude, &mut notes).map_err(|p| problems.push(p));
            (errors, latency, predictions)
        }
        // The other signals are told from the library's other series by the requests counter
        // (its route label, its name): they wait until it is recognised.
        Err(()) => (Err(()), Err(()), Err(())),
    };
    match (requests, errors, latency, predictions) {
        (Ok((name, route_matcher)), Ok(errors), Ok(latency), Ok((predictions, label, version)))
            if problems.is_empty() =>
        {
            let mut requests = Pick::new(&name);
            if let Some((l, v)) = route_matcher {
                requests = requests.with(&l, Op::Equal, &v);
            }
            Ok(Recognised {
                requests,
                errors,
                latency,
                predictions,
                prediction_label: label,
                version_label: version,
                notes,
            })
        }
        _ => Err(NotRecognised(problems)),
    }
}

/// The requests counter and, when its series carry a route label, the matcher for `route`.
fn requests(
    c: &Catalogue,
    route: &str,
    notes: &mut Vec<String>,
) -> Result<(String, Option<(String, String)>), Unrecognised> {
    let candidates: Vec<(&String, &Family)> = c
        .of_kind(Kind::Counter)
        .filter(|(n, _)| {
            n.contains("request")
                && !contains_any(n, &["error", "fail", "exception", "size", "byte"])
        })
        .collect();
    let counters = c.shown(Kind::Counter);
    let (name, f) = match candidates.as_slice() {
        [] => {
            return Err(Unrecognised {
                signal: "requests",
                saw: counters,
                needs: "a counter of requests answered (a name with `request`, e.g. \
                        `http_requests_total`); none of the counters above is one"
                    .into(),
            })
        }
        [one] => *one,
        several => {
            // Several request counters: the one that carries the route and a status wins.
            let with_route: Vec<_> = several
                .iter()
                .filter(|(_, f)| route_label(f).is_some_and(|l| f.has_value(l, route)))
                .collect();
            match with_route.as_slice() {
                [one] => **one,
                _ => {
                    return Err(Unrecognised {
                        signal: "requests",
                        saw: several.iter().map(|(n, f)| show(n, f)).collect(),
                        needs: "exactly one counter of requests; several fit: set `requests` \
                                to the one that counts the model's answers"
                            .into(),
                    })
                }
            }
        }
    };
    if f.series == 0 {
        return Err(Unrecognised {
            signal: "requests",
            saw: vec![show(name, f)],
            needs: format!(
                "series of `{name}`: it has none yet, its labels appear with the first request; \
                 send one request to {route} and run `canary init` again"
            ),
        });
    }
    let Some(label) = route_label(f) else {
        notes.push(format!(
            "requests: `{name}` (counter, no route label: every request counts)"
        ));
        return Ok((name.clone(), None));
    };
    if !f.has_value(label, route) {
        return Err(Unrecognised {
            signal: "requests",
            saw: vec![show(name, f)],
            needs: format!(
                "a series of `{name}` with {label}=\"{route}\": send one request to {route} first, \
                 or pass --route with the path the model answers on"
            ),
        });
    }
    notes.push(format!(
        "requests: `{name}` (counter) with {label}=\"{route}\" (other routes seen: {})",
        f.values(label)
            .into_iter()
            .flatten()
            .filter(|v| *v != route)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok((name.clone(), Some((label.to_string(), route.to_string()))))
}

/// The errors: 5xx answers of the requests counter (by its status label), else a counter of
/// errors of its own.
fn errors(
    c: &Catalogue,
    requests: &str,
    route: Option<&(String, String)>,
    notes: &mut Vec<String>,
) -> Result<Pick, Unrecognised> {
    let f = &c.families[requests];
    let mut pick = Pick::new(requests);
    if let Some((l, v)) = route {
        pick = pick.with(l, Op::Equal, v);
    }
    if let Some((label, op, value)) = status_matcher(f) {
        notes.push(format!(
            "errors: the 5xx answers of `{requests}` ({label} values seen: {})",
            f.values(label)
                .into_iter()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return Ok(pick.with(label, op, value));
    }
    let candidates: Vec<(&String, &Family)> = c
        .of_kind(Kind::Counter)
        .filter(|(n, _)| *n != requests && contains_any(n, &["error", "fail", "exception"]))
        .collect();
    let chosen = match candidates.as_slice() {
        [one] => Some(*one),
        several => {
            let about_requests: Vec<_> = several
                .iter()
                .filter(|(n, _)| n.contains("request"))
                .collect();
            match about_requests.as_slice() {
                [one] => Some(**one),
                _ => None,
            }
        }
    };
    let Some((name, ef)) = chosen else {
        let mut saw = vec![show(requests, f)];
        saw.extend(candidates.iter().map(|(n, f)| show(n, f)));
        return Err(Unrecognised {
            signal: "errors",
            needs: if candidates.is_empty() {
                format!(
                    "a status label on `{requests}` (`status` or `code`, with values such as \
                     200/500 or 2xx/5xx), or a counter of failed requests (e.g. \
                     `request_errors_total`)"
                )
            } else {
                "exactly one counter of failed requests; several fit: set `errors` by hand".into()
            },
            saw,
        });
    };
    let mut pick = Pick::new(name);
    if let Some((l, v)) = route {
        // The route label of the errors counter may be missing until a route fails.
        if let Some(el) =
            route_label(ef).or_else(|| ef.labels.contains_key(l).then_some(l.as_str()))
        {
            pick = pick.with(el, Op::Equal, v);
        }
    }
    notes.push(format!("errors: `{name}` (counter of failed requests)"));
    Ok(pick)
}

/// The latency histogram: per route when the requests carry a route (a histogram without the
/// route mixes health checks and scrapes into the model's latency).
fn latency(
    c: &Catalogue,
    route: &str,
    by_route: bool,
    notes: &mut Vec<String>,
) -> Result<Pick, Unrecognised> {
    let histograms = c.shown(Kind::Histogram);
    let candidates: Vec<(&String, &Family)> = c
        .of_kind(Kind::Histogram)
        .filter(|(n, _)| contains_any(n, &["duration", "latency", "seconds", "time"]))
        .collect();
    if candidates.is_empty() {
        return Err(Unrecognised {
            signal: "latency",
            saw: histograms,
            needs: "a histogram of request durations in seconds (`_bucket`/`_sum`/`_count`, \
                    e.g. `http_request_duration_seconds`); a summary or a gauge cannot be compared"
                .into(),
        });
    }
    let routed: Vec<(&String, &Family)> = candidates
        .iter()
        .filter(|(_, f)| route_label(f).is_some_and(|l| f.has_value(l, route)))
        .copied()
        .collect();
    let pool = if by_route && !routed.is_empty() {
        routed
    } else {
        candidates.clone()
    };
    let pool: Vec<(&String, &Family)> = if pool.len() > 1 {
        let about_requests: Vec<_> = pool
            .iter()
            .filter(|(n, _)| n.contains("request"))
            .copied()
            .collect();
        if about_requests.is_empty() {
            pool
        } else {
            about_requests
        }
    } else {
        pool
    };
    let (name, f) = match pool.as_slice() {
        [one] => *one,
        several => {
            return Err(Unrecognised {
                signal: "latency",
                saw: several.iter().map(|(n, f)| show(n, f)).collect(),
                needs: "exactly one histogram of request durations; several fit: set `latency` \
                        to the one timing the model's answers"
                    .into(),
            })
        }
    };
    if contains_any(name, &["millisecond", "_ms"])
        || !name.contains("seconds") && name.contains("micro")
    {
        return Err(Unrecognised {
            signal: "latency",
            saw: vec![show(name, f)],
            needs: "a latency histogram in seconds (the thresholds are compared in seconds); \
                    this one is in another unit"
                .into(),
        });
    }
    let skipped: Vec<String> = candidates
        .iter()
        .filter(|(n, _)| *n != name)
        .map(|(n, other)| {
            if route_label(other).is_some() {
                format!("{n} (no {route} series)")
            } else {
                format!("{n} (no route label: every route mixed)")
            }
        })
        .collect();
    let mut pick = Pick::new(name);
    match route_label(f).filter(|l| f.has_value(l, route)) {
        Some(l) => {
            pick = pick.with(l, Op::Equal, route);
            notes.push(format!(
                "latency: `{name}` (histogram) with {l}=\"{route}\"{}",
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!("; not {}", skipped.join(", "))
                }
            ));
        }
        None if by_route => notes.push(format!(
            "latency: `{name}` (histogram); it has no route label, so every route is mixed in"
        )),
        None => notes.push(format!("latency: `{name}` (histogram)")),
    }
    Ok(pick)
}

/// The counter with one series per predicted class, its class label and its version label.
fn predictions(
    c: &Catalogue,
    exclude: &[&str],
    notes: &mut Vec<String>,
) -> Result<(Pick, String, Option<String>), Unrecognised> {
    let class_labels = |f: &Family| -> Vec<String> {
        f.labels
            .keys()
            .filter(|l| {
                !ROUTE_LABELS.contains(&l.as_str())
                    && !STATUS_LABELS.contains(&l.as_str())
                    && !NOT_CLASS_LABELS.contains(&l.as_str())
                    && !l.contains("version")
            })
            .cloned()
            .collect()
    };
    let candidates: Vec<(&String, &Family, Vec<String>)> = c
        .of_kind(Kind::Counter)
        .filter(|(n, _)| !exclude.contains(&n.as_str()))
        .filter_map(|(n, f)| {
            let labels = class_labels(f);
            let named = contains_any(n, PREDICTION_WORDS)
                || labels.iter().any(|l| CLASS_LABELS.contains(&l.as_str()));
            (named && !labels.is_empty()).then_some((n, f, labels))
        })
        .collect();
    let pool: Vec<_> = if candidates.len() > 1 {
        let predict: Vec<_> = candidates
            .iter()
            .filter(|(n, _, _)| n.contains("predict"))
            .cloned()
            .collect();
        if predict.is_empty() {
            candidates
        } else {
            predict
        }
    } else {
        candidates
    };
    let (name, f, labels) = match pool.as_slice() {
        [one] => one,
        [] => {
            return Err(Unrecognised {
                signal: "predictions",
                saw: c
                    .of_kind(Kind::Counter)
                    .filter(|(n, _)| !exclude.contains(&n.as_str()))
                    .map(|(n, f)| show(n, f))
                    .collect(),
                needs: "a counter of predictions with one series per predicted class (e.g. \
                        `model_predictions_total{class=\"positive\"}`); without one, set \
                        predictions = \"\" by hand to switch the prediction gate off"
                    .into(),
            })
        }
        several => {
            return Err(Unrecognised {
                signal: "predictions",
                saw: several.iter().map(|(n, f, _)| show(n, f)).collect(),
                needs: "exactly one counter of predictions per class; several fit: set \
                        `predictions` and `prediction_label` by hand"
                    .into(),
            })
        }
    };
    let label = match labels.as_slice() {
        [one] => one.clone(),
        several => {
            let known: Vec<&String> = several
                .iter()
                .filter(|l| CLASS_LABELS.contains(&l.as_str()))
                .collect();
            match known.as_slice() {
                [one] => (*one).clone(),
                _ => {
                    return Err(Unrecognised {
                        signal: "predictions",
                        saw: vec![show(name, f)],
                        needs: format!(
                            "one label of `{name}` that holds the class; {} could each be it: \
                             set `prediction_label` by hand",
                            several.join(", ")
                        ),
                    })
                }
            }
        }
    };
    let version = f.labels.keys().find(|l| l.contains("version")).cloned();
    notes.push(format!(
        "predictions: `{name}` by {label} (classes seen: {}){}",
        f.values(&label)
            .into_iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        version
            .as_ref()
            .map(|v| format!("; model version in `{v}`"))
            .unwrap_or_default()
    ));
    Ok((Pick::new(name), label, version))
}

/// Checks that every backend exports the recognised metrics (a backend of another kind, or
/// one not yet instrumented, would be judged on missing series).
pub fn check_backends(
    recognised: &Recognised,
    backends: &[(String, Catalogue)],
) -> Result<(), NotRecognised> {
    let problems: Vec<Unrecognised> = backends
        .iter()
        .filter_map(|(source, c)| {
            let missing: Vec<&str> = [
                &recognised.requests.metric,
                &recognised.errors.metric,
                &recognised.latency.metric,
                &recognised.predictions.metric,
            ]
            .into_iter()
            .map(String::as_str)
            .filter(|m| !c.families.contains_key(*m))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
            (!missing.is_empty()).then(|| Unrecognised {
                signal: "backends",
                saw: c.families.iter().map(|(n, f)| show(n, f)).collect(),
                needs: format!(
                    "{source} does not export {} that the other backends export: every backend \
                     of a service must run the same kind of server",
                    missing.join(", ")
                ),
            })
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(NotRecognised(problems))
    }
}

/// When backends recognised one by one export different series (a service mixing two kinds of
/// server), that difference: it explains a failed recognition of them together better.
pub fn disagreement(backends: &[(String, Catalogue)], route: &str) -> Option<NotRecognised> {
    let each: Vec<(&String, Recognised)> = backends
        .iter()
        .filter_map(|(source, c)| Some((source, recognise(c, route).ok()?)))
        .collect();
    let series = |r: &Recognised| {
        format!(
            "requests {}, errors {}, latency {}, predictions {} by {}",
            r.requests, r.errors, r.latency, r.predictions, r.prediction_label
        )
    };
    let first = series(&each.first()?.1);
    if each.iter().all(|(_, r)| series(r) == first) {
        return None;
    }
    Some(NotRecognised(vec![Unrecognised {
        signal: "backends",
        saw: each
            .iter()
            .map(|(source, r)| format!("{source}: {}", series(r)))
            .collect(),
        needs: "the same series on every backend of a service: these run different kinds of \
                server (list the backends of one service only)"
            .into(),
    }]))
}
