//! `OrgId`: the identifier of an organization (tenant).
//!
//! It appears in PostgreSQL user names (`<role>.<org>`), host names
//! (`<org>.<domain>`), URLs and store keys, so it is restricted to what is safe
//! in all of them: 1–63 characters of lowercase ASCII letters, digits and `-`,
//! starting with a letter or digit (a DNS label).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid organization id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrgIdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most 63 characters, got {0}")]
    TooLong(usize),
    #[error(
        "may contain only lowercase letters, digits and '-', and must not start or end with '-'"
    )]
    BadCharacter,
}

/// A validated organization id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrgId(String);

impl OrgId {
    pub fn parse(s: &str) -> Result<Self, OrgIdError> {
        if s.is_empty() {
            return Err(OrgIdError::Empty);
        }
        if s.len() > 63 {
            return Err(OrgIdError::TooLong(s.len()));
        }
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok_chars || s.starts_with('-') || s.ends_with('-') {
            return Err(OrgIdError::BadCharacter);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OrgId {
    type Error = OrgIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<OrgId> for String {
    fn from(id: OrgId) -> Self {
        id.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        assert_eq!(OrgId::parse("acme-2").unwrap().as_str(), "acme-2");
    }

    #[test]
    fn refuses_what_would_break_user_names_or_hosts() {
        assert_eq!(OrgId::parse(""), Err(OrgIdError::Empty));
        assert_eq!(OrgId::parse("Acme"), Err(OrgIdError::BadCharacter));
        assert_eq!(OrgId::parse("a.b"), Err(OrgIdError::BadCharacter));
        assert_eq!(OrgId::parse("-a"), Err(OrgIdError::BadCharacter));
        assert_eq!(OrgId::parse(&"a".repeat(64)), Err(OrgIdError::TooLong(64)));
    }
}
