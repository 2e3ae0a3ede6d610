//! Series selectors, as in `PromQL`: `http_requests_total{route="/predict", status=~"5.."}`.
//!
//! A selector names one metric and, optionally, label matchers: `=` (equal), `!=` (not
//! equal), `=~` (matches the regular expression) and `!~` (does not match). As in `PromQL`, a
//! regular expression must match the whole label value (it is anchored at both ends) and a
//! label that a series does not have has the value `""`. Only the series that satisfy every
//! matcher are summed.

use std::fmt;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A regular expression larger than this once compiled is refused (a selector is matched
/// against every scraped series on every poll).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// How a matcher compares a label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`
    Matches,
    /// `!~`
    NotMatches,
}

impl MatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Matches => "=~",
            MatchOp::NotMatches => "!~",
        }
    }
}

/// One label matcher of a selector.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub label: String,
    pub op: MatchOp,
    pub value: String,
    /// The anchored expression, for `=~` and `!~`.
    regex: Option<Regex>,
}

impl Matcher {
    /// Whether a label value (`""` when the series lacks the label) satisfies this matcher.
    pub fn accepts(&self, value: &str) -> bool {
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => value == self.value,
            (MatchOp::NotEqual, _) => value != self.value,
            (MatchOp::Matches, Some(re)) => re.is_match(value),
            (MatchOp::NotMatches, Some(re)) => !re.is_match(value),
            (MatchOp::Matches | MatchOp::NotMatches, None) => {
                unreachable!("a regex matcher is built with its regex")
            }
        }
    }
}

/// A metric name with label matchers. The empty selector (no metric) switches a signal off.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    metric: String,
    matchers: Vec<Matcher>,
}

/// Why a selector could not be parsed. The messages name the problem; the config check adds
/// the key and an example.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("it has no metric name before `{{`")]
    NoMetric,
    #[error(
        "\"{0}\" is not a metric name (letters, digits, '_' and ':', not starting with a digit)"
    )]
    BadMetric(String),
    #[error("\"{0}\" is not a label name (letters, digits and '_', not starting with a digit)")]
    BadLabel(String),
    #[error("the label `__name__` cannot be matched here; write the metric name before `{{`")]
    NameLabel,
    #[error("unknown operator \"{op}\" after label `{label}`; use =, !=, =~ or !~")]
    UnknownOperator { label: String, op: String },
    #[error("the value of `{0}` is not quoted; write it in double quotes, e.g. {0}=\"200\"")]
    Unquoted(String),
    #[error("the value of `{0}` has no closing quote")]
    Unterminated(String),
    #[error("the value of `{label}` has an unknown escape `\\{escape}` (use \\\\, \\\" or \\n)")]
    BadEscape { label: String, escape: char },
    #[error("the regular expression for `{label}` is not valid: {message}")]
    BadRegex { label: String, message: String },
    #[error("expected `,` or `}}` after the matcher on `{0}`")]
    ExpectedSeparator(String),
    #[error("the label matchers have no closing `}}`")]
    Unclosed,
    #[error("unexpected text after `}}`: \"{0}\"")]
    Trailing(String),
}

fn is_metric_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn is_label_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || (!first && c.is_ascii_digit())
}

/// Whether `name` is a valid metric name.
fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| is_metric_char(c, true)) && chars.all(|c| is_metric_char(c, false))
}

/// Whether `name` is a valid label name.
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| is_label_char(c, true)) && chars.all(|c| is_label_char(c, false))
}

/// Splits `s` at the first character that fails `keep`.
fn take_while(s: &str, keep: impl Fn(char) -> bool) -> (&str, &str) {
    let end = s.find(|c| !keep(c)).unwrap_or(s.len());
    s.split_at(end)
}

/// Reads a quoted string (double or single quotes, backslash escapes) at the start of `s`;
/// returns the value and the rest after the closing quote.
fn quoted<'a>(s: &'a str, label: &str) -> Result<(String, &'a str), SelectorError> {
    let mut chars = s.char_indices();
    let Some((_, quote @ ('"' | '\''))) = chars.next() else {
        return Err(SelectorError::Unquoted(label.to_string()));
    };
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, e @ ('\\' | '"' | '\''))) => out.push(e),
                Some((_, e)) => {
                    return Err(SelectorError::BadEscape {
                        label: label.to_string(),
                        escape: e,
                    })
                }
                None => break,
            },
            c if c == quote => return Ok((out, &s[i + c.len_utf8()..])),
            c => out.push(c),
        }
    }
    Err(SelectorError::Unterminated(label.to_string()))
}

/// Compiles `value` anchored at both ends, as `PromQL` does (`.` also matches a newline). The
/// expression is first compiled alone, so that text such as `a)|(b` cannot escape the anchors.
fn anchored(label: &str, value: &str) -> Result<Regex, SelectorError> {
    let build = |pattern: &str| {
        RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| SelectorError::BadRegex {
                label: label.to_string(),
                // The last line of the crate's message says what is wrong.
                message: e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .trim_start_matches("error: ")
                    .to_string(),
            })
    };
    build(value)?;
    build(&format!("^(?s:{value})$"))
}

impl Selector {
    /// Parses `metric` or `metric{label OP "value", ...}`; `""` is the empty selector.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Selector::default());
        }
        let (metric, rest) = take_while(text, |c| is_metric_char(c, false));
        if metric.is_empty() {
            return Err(if rest.starts_with('{') {
                SelectorError::NoMetric
            } else {
                SelectorError::BadMetric(text.to_string())
            });
        }
        if !valid_metric_name(metric) {
            return Err(SelectorError::BadMetric(metric.to_string()));
        }
        let rest = rest.trim_start();
        let mut selector = Selector {
            metric: metric.to_string(),
            matchers: Vec::new(),
        };
        if rest.is_empty() {
            return Ok(selector);
        }
        let Some(mut rest) = rest.strip_prefix('{') else {
            // Something other than `{` right after the name: the name itself is bad.
            let word = text.split_whitespace().next().unwrap_or(text);
            return Err(SelectorError::BadMetric(word.to_string()));
        };
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                let after = after.trim();
                if !after.is_empty() {
                    return Err(SelectorError::Trailing(after.to_string()));
                }
                return Ok(selector);
            }
            if rest.is_empty() {
                return Err(SelectorError::Unclosed);
            }
            let (label, after) = take_while(rest, |c| is_label_char(c, false));
            if !valid_label_name(label) {
                let word: String = rest
                    .chars()
                    .take_while(|c| !matches!(c, '=' | '!' | '~' | ',' | '}' | ' '))
                    .collect();
                return Err(SelectorError::BadLabel(if word.is_empty() {
                    rest.chars().take(1).collect()
                } else {
                    word
                }));
            }
            if label == "__name__" {
                return Err(SelectorError::NameLabel);
            }
            let after = after.trim_start();
            let (op_text, after_op) =
                take_while(after, |c| matches!(c, '=' | '!' | '~' | '<' | '>'));
            let op = match op_text {
                "=" => MatchOp::Equal,
                "!=" => MatchOp::NotEqual,
                "=~" => MatchOp::Matches,
                "!~" => MatchOp::NotMatches,
                other => {
                    let shown = if other.is_empty() {
                        after.chars().take(1).collect()
                    } else {
                        other.to_string()
                    };
                    return Err(SelectorError::UnknownOperator {
                        label: label.to_string(),
                        op: shown,
                    });
                }
            };
            let (value, after_value) = quoted(after_op.trim_start(), label)?;
            let regex = match op {
                MatchOp::Matches | MatchOp::NotMatches => Some(anchored(label, &value)?),
                MatchOp::Equal | MatchOp::NotEqual => None,
            };
            selector.matchers.push(Matcher {
                label: label.to_string(),
                op,
                value,
                regex,
            });
            rest = after_value.trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                if rest.is_empty() {
                    return Err(SelectorError::Unclosed);
                }
                return Err(SelectorError::ExpectedSeparator(label.to_string()));
            }
        }
    }

    /// A selector of every series of `metric` (no matchers).
    pub fn metric_only(metric: &str) -> Selector {
        Selector {
            metric: metric.to_string(),
            matchers: Vec::new(),
        }
    }

    /// No metric: the signal is switched off.
    pub fn is_empty(&self) -> bool {
        self.metric.is_empty()
    }

    pub fn metric(&self) -> &str {
        &self.metric
    }

    pub fn matchers(&self) -> &[Matcher] {
        &self.matchers
    }

    /// Whether a series with these labels is selected; `label` gives a label's value.
    pub fn accepts<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.matchers
            .iter()
            .all(|m| m.accepts(label(&m.label).unwrap_or("")))
    }
}

fn escape_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl fmt::Display for Selector {
    /// The canonical form: `metric{label="value",...}`, matchers in the order written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.metric)?;
        if self.matchers.is_empty() {
            return Ok(());
        }
        f.write_str("{")?;
        for (i, m) in self.matchers.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(
                f,
                "{}{}\"{}\"",
                m.label,
                m.op.as_str(),
                escape_value(&m.value)
            )?;
        }
        f.write_str("}")
    }
}

impl PartialEq for Selector {
    fn eq(&self, other: &Self) -> bool {
        self.metric == other.metric
            && self.matchers.len() == other.matchers.len()
            && self
                .matchers
                .iter()
                .zip(&other.matchers)
                .all(|(a, b)| a.label == b.label && a.op == b.op && a.value == b.value)
    }
}

impl Eq for Selector {}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Selector::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}
