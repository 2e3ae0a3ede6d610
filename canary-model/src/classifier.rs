//! A tiny text sentiment classifier: a logistic model over a word lexicon.
//!
//! The score is `bias + sum(weight(word))`, with the sign of a word flipped when it follows a
//! negation ("not good"), and the probability of the positive class is the logistic of that score.
//! Version `v2` is the same model retrained a little: a few weights moved, a few words added and
//! a slightly different bias, so the two versions agree on clear texts and differ on borderline ones.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Model version served by a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelVersion {
    V1,
    V2,
}

impl ModelVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelVersion::V1 => "v1",
            ModelVersion::V2 => "v2",
        }
    }
}

impl fmt::Display for ModelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A model version name that is not `v1` or `v2`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown model version `{0}`: use `v1` or `v2`")]
pub struct UnknownVersion(pub String);

impl FromStr for ModelVersion {
    type Err = UnknownVersion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "v1" => Ok(ModelVersion::V1),
            "v2" => Ok(ModelVersion::V2),
            _ => Err(UnknownVersion(s.to_owned())),
        }
    }
}

/// Predicted class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sentiment {
    Negative,
    Positive,
}

impl Sentiment {
    /// Every class, in label order (used to pre-create metric series).
    pub const ALL: [Sentiment; 2] = [Sentiment::Negative, Sentiment::Positive];

    pub fn as_str(self) -> &'static str {
        match self {
            Sentiment::Negative => "negative",
            Sentiment::Positive => "positive",
        }
    }
}

impl fmt::Display for Sentiment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A class name that is not `positive` or `negative`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown sentiment class `{0}`: use `positive` or `negative`")]
pub struct UnknownSentiment(pub String);

impl FromStr for Sentiment {
    type Err = UnknownSentiment;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "positive" => Ok(Sentiment::Positive),
            "negative" => Ok(Sentiment::Negative),
            _ => Err(UnknownSentiment(s.to_owned())),
        }
    }
}

/// Output of one classification.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prediction {
    pub class: Sentiment,
    /// Probability of the predicted class, in 0.5..=1.
    pub confidence: f64,
    /// Probability of the positive class, in 0..=1.
    pub positive_probability: f64,
}

/// Weights shared by both versions.
const BASE_WEIGHTS: &[(&str, f64)] = &[
    ("good", 1.2),
    ("great", 1.8),
    ("excellent", 2.2),
    ("amazing", 2.0),
    ("love", 1.9),
    ("loved", 1.9),
    ("like", 0.8),
    ("nice", 1.0),
    ("happy", 1.4),
    ("fast", 0.7),
    ("helpful", 1.3),
    ("recommend", 1.5),
    ("perfect", 2.1),
    ("fine", 0.4),
    ("works", 0.6),
    ("best", 1.7),
    ("enjoyed", 1.6),
    ("bad", -1.4),
    ("terrible", -2.2),
    ("awful", -2.1),
    ("hate", -2.0),
    ("hated", -2.0),
    ("poor", -1.3),
    ("slow", -0.9),
    ("broken", -1.8),
    ("worst", -2.3),
    ("disappointed", -1.7),
    ("disappointing", -1.7),
    ("useless", -1.9),
    ("boring", -1.2),
    ("refund", -1.1),
    ("crash", -1.2),
    ("crashes", -1.2),
    ("bug", -0.8),
    ("wrong", -1.0),
    ("expensive", -0.5),
];

/// Version 2's changes to the base lexicon: re-estimated weights and new words.
const V2_WEIGHTS: &[(&str, f64)] = &[
    ("fine", 0.2),
    ("slow", -1.1),
    ("expensive", -0.8),
    ("okay", 0.3),
    ("meh", -0.7),
    ("solid", 1.1),
    ("reliable", 1.2),
    ("laggy", -1.0),
];

const V1_BIAS: f64 = 0.15;
const V2_BIAS: f64 = 0.05;

/// Words that flip the sign of the next few words.
const NEGATIONS: &[&str] = &["not", "no", "never", "hardly", "without"];
/// How many following words a negation applies to.
const NEGATION_SPAN: usize = 2;

/// A logistic lexicon classifier for one model version.
#[derive(Clone, Debug)]
pub struct Classifier {
    version: ModelVersion,
    bias: f64,
}

impl Classifier {
    pub fn new(version: ModelVersion) -> Self {
        let bias = match version {
            ModelVersion::V1 => V1_BIAS,
            ModelVersion::V2 => V2_BIAS,
        };
        Self { version, bias }
    }

    pub fn version(&self) -> ModelVersion {
        self.version
    }

    /// Weight of one lower-case word in this version's lexicon (0 when unknown).
    pub fn weight(&self, word: &str) -> f64 {
        if self.version == ModelVersion::V2 {
            if let Some((_, w)) = V2_WEIGHTS.iter().find(|(k, _)| *k == word) {
                return *w;
            }
        }
        BASE_WEIGHTS
            .iter()
            .find(|(k, _)| *k == word)
            .map_or(0.0, |(_, w)| *w)
    }

    /// The linear score (log-odds of the positive class) of a text.
    pub fn score(&self, text: &str) -> f64 {
        let mut score = self.bias;
        // A negation's scope ends at punctuation: "not good, disappointing" stays negative.
        for clause in text.split(['.', ',', ';', ':', '!', '?']) {
            let mut negated_for = 0usize;
            for word in tokens(clause) {
                if NEGATIONS.contains(&word.as_str()) || word.ends_with("n't") {
                    negated_for = NEGATION_SPAN;
                    continue;
                }
                let w = self.weight(&word);
                score += if negated_for > 0 { -w } else { w };
                negated_for = negated_for.saturating_sub(1);
            }
        }
        score
    }

    pub fn predict(&self, text: &str) -> Prediction {
        let p = sigmoid(self.score(text));
        let class = if p >= 0.5 {
            Sentiment::Positive
        } else {
            Sentiment::Negative
        };
        Prediction {
            class,
            confidence: p.max(1.0 - p),
            positive_probability: p,
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Lower-case words: runs of letters, digits and apostrophes.
fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_texts_are_classified_by_both_versions() {
        for version in [ModelVersion::V1, ModelVersion::V2] {
            let model = Classifier::new(version);
            let p = model.predict("This is a great product, I love it!");
            assert_eq!(p.class, Sentiment::Positive, "{version}");
            assert!(p.confidence > 0.9, "{version}: {p:?}");
            let n = model.predict("Terrible. It crashes and support was useless.");
            assert_eq!(n.class, Sentiment::Negative, "{version}");
            assert!(n.confidence > 0.9, "{version}: {n:?}");
        }
    }

    #[test]
    fn negation_flips_the_following_words() {
        let model = Classifier::new(ModelVersion::V1);
        assert_eq!(model.predict("good").class, Sentiment::Positive);
        assert_eq!(model.predict("not good").class, Sentiment::Negative);
        assert_eq!(model.predict("it isn't bad").class, Sentiment::Positive);
        // Punctuation ends the negation.
        assert_eq!(
            model.predict("not good, disappointing").class,
            Sentiment::Negative
        );
        // The negation reaches two words only.
        let far = model.score("not a b good");
        assert!((far - (V1_BIAS + 1.2)).abs() < 1e-9, "{far}");
    }

    #[test]
    fn empty_text_is_the_bias() {
        let model = Classifier::new(ModelVersion::V1);
        let p = model.predict("");
        assert!((p.positive_probability - sigmoid(V1_BIAS)).abs() < 1e-12);
        assert_eq!(p.class, Sentiment::Positive);
        assert!((0.5..=1.0).contains(&p.confidence));
    }

    #[test]
    fn versions_differ_slightly() {
        let v1 = Classifier::new(ModelVersion::V1);
        let v2 = Classifier::new(ModelVersion::V2);
        // Borderline text: v1 leans positive, v2 negative.
        let text = "it is fine but expensive";
        assert_eq!(v1.predict(text).class, Sentiment::Positive);
        assert_eq!(v2.predict(text).class, Sentiment::Negative);
        // Words only v2 knows.
        assert!(v1.weight("solid").abs() < f64::EPSILON);
        assert!(v2.weight("solid") > 0.0);
        // Clear texts keep their class.
        assert_eq!(v2.predict("excellent and fast").class, Sentiment::Positive);
    }

    #[test]
    fn versions_and_classes_parse() {
        assert_eq!("V2".parse::<ModelVersion>(), Ok(ModelVersion::V2));
        assert!("v3".parse::<ModelVersion>().is_err());
        assert_eq!("negative".parse::<Sentiment>(), Ok(Sentiment::Negative));
        assert!("neutral".parse::<Sentiment>().is_err());
    }
}
