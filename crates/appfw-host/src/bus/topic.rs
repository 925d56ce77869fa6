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

fn valid_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':')
}

fn valid_token(t: &str) -> bool {
    !t.is_empty() && t.bytes().all(valid_byte)
}

/// Checks a concrete topic (no wildcards).
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
        return Err(format!("topic must be 1 to {MAX_TOPIC_LEN} bytes long"));
    }
    // One pass over the bytes for the common, valid topic; the split below only names the
    // culprit.
    let mut after_dot = true;
    let fine = topic.bytes().all(|b| {
        let dot = b == b'.';
        let ok = if dot { !after_dot } else { valid_byte(b) };
        after_dot = dot;
        ok
    });
    if fine && !after_dot {
        return Ok(());
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

    /// Whether every topic `other` matches, this one matches too.
    pub fn covers(&self, other: &Self) -> bool {
        let mut theirs = other.tokens.iter();
        for tok in &self.tokens {
            let Some(t) = theirs.next() else {
                return false;
            };
            match (tok, t) {
                // One or more tokens: theirs has at least one here, whatever it is.
                (Token::Tail, _) => return true,
                (Token::Star, Token::Literal(_) | Token::Star) => {}
                (Token::Literal(a), Token::Literal(b)) if a == b => {}
                _ => return false,
            }
        }
        theirs.next().is_none()
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
    fn covering_is_pattern_containment() {
        let cases = [
            (">", "a.*", true),
            ("a.>", "a.b.>", true),
            ("a.>", "a", false),
            ("a.*", "a.b", true),
            ("a.*", "a.*", true),
            ("a.*", "a.>", false),
            ("a.b", "a.*", false),
            ("*.b", "a.b", true),
            ("a.*.c", "a.x.c", true),
            ("a.*", "a.b.c", false),
        ];
        for (a, b, want) in cases {
            let (pa, pb) = (Pattern::parse(a).unwrap(), Pattern::parse(b).unwrap());
            assert_eq!(pa.covers(&pb), want, "{a} covers {b}");
        }
    }

    #[test]
    fn the_config_checks_patterns_like_the_bus() {
        for p in [
            "a",
            "a.*",
            "a.>",
            ">",
            "*",
            "a.>.b",
            "a..b",
            "",
            "a b",
            "a.b-c:d_e",
            "a.*x",
            "é",
        ] {
            assert_eq!(
                Pattern::parse(p).is_ok(),
                appfw_config::check_pattern(p).is_ok(),
                "{p:?}"
            );
        }
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert!(Pattern::parse(&long).is_err() && appfw_config::check_pattern(&long).is_err());
    }

    #[test]
    fn bad_patterns_and_topics_are_refused() {
        assert!(Pattern::parse("a.>.b").is_err());
        assert!(Pattern::parse("a..b").is_err());
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("a b").is_err());
        assert!(validate_topic("a.*").is_err());
        assert!(validate_topic("a.b-c:d_e").is_ok());
        for bad in [".a", "a.", "a..b", ".", "a b", "é", "a.>"] {
            let e = validate_topic(bad).unwrap_err();
            assert!(e.contains("invalid token"), "{bad:?}: {e}");
        }
        assert!(validate_topic(&"a".repeat(300)).is_err());
    }
}
