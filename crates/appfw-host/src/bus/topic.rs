//! Topic names and subscription patterns.
//!
//! A topic is dot-separated tokens (`orders.eu.created`). In a pattern, `*` matches exactly one
//! token and a final `>` matches one or more.

/// Longest topic or pattern, bytes.
pub const MAX_TOPIC_LEN: usize = 255;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Literal(Box<str>),
    Star,
    Tail,
}

/// A parsed subscription pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    tokens: Vec<Token>,
    text: Box<str>,
}

fn valid_token(t: &str) -> bool {
    !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':'))
}

/// Checks a concrete topic (no wildcards).
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
        return Err(format!("topic must be 1 to {MAX_TOPIC_LEN} bytes long"));
    }
    if let Some(bad) = topic.split('.').find(|t| !valid_token(t)) {
        return Err(format!(
            "invalid token {bad:?} in topic {topic:?}: tokens are non-empty and made of letters, digits, '_', '-', ':' (no wildcards)"
        ));
    }
    Ok(())
}

impl Pattern {
    /// Parses a pattern.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > MAX_TOPIC_LEN {
            return Err(format!("pattern must be 1 to {MAX_TOPIC_LEN} bytes long"));
        }
        let parts: Vec<&str> = text.split('.').collect();
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            tokens.push(match *p {
                "*" => Token::Star,
                ">" if i + 1 == parts.len() => Token::Tail,
                ">" => return Err(format!("'>' must be the last token in pattern {text:?}")),
                t if valid_token(t) => Token::Literal(t.into()),
                t => return Err(format!("invalid token {t:?} in pattern {text:?}")),
            });
        }
        Ok(Self {
            tokens,
            text: text.into(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `topic` matches. Allocation-free.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for tok in &self.tokens {
            match tok {
                Token::Tail => return parts.next().is_some(),
                Token::Star => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Token::Literal(l) => {
                    if parts.next() != Some(&**l) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        let cases = [
            ("orders.*", "orders.created", true),
            ("orders.*", "orders.eu.created", false),
            ("orders.*", "orders", false),
            ("orders.>", "orders.eu.created", true),
            ("orders.>", "orders", false),
            ("*.created", "orders.created", true),
            ("orders.eu", "orders.eu", true),
            ("orders.eu", "orders.us", false),
            (">", "a", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.d", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(Pattern::parse(p).unwrap().matches(t), want, "{p} vs {t}");
        }
    }

    #[test]
    fn bad_patterns_and_topics_are_refused() {
        assert!(Pattern::parse("a.>.b").is_err());
        assert!(Pattern::parse("a..b").is_err());
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("a b").is_err());
        assert!(validate_topic("a.*").is_err());
        assert!(validate_topic("a.b-c:d_e").is_ok());
        assert!(validate_topic(&"a".repeat(300)).is_err());
    }
}
