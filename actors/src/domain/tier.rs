//! `Tier`: the plans an organization can be on, in upgrade order.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A subscription tier. The order of the variants is the upgrade order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Free,
    Starter,
    Pro,
    Enterprise,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tier `{0}`; expected one of free, starter, pro, enterprise")]
pub struct TierParseError(pub String);

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Free, Tier::Starter, Tier::Pro, Tier::Enterprise];

    /// Lowercase name, as used in configuration, JSON and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Starter => "starter",
            Tier::Pro => "pro",
            Tier::Enterprise => "enterprise",
        }
    }

    /// Uppercase name, as shown to people in error messages ("tier FREE").
    pub fn display_name(self) -> &'static str {
        match self {
            Tier::Free => "FREE",
            Tier::Starter => "STARTER",
            Tier::Pro => "PRO",
            Tier::Enterprise => "ENTERPRISE",
        }
    }

    /// The next tier up, if any.
    pub fn next(self) -> Option<Tier> {
        match self {
            Tier::Free => Some(Tier::Starter),
            Tier::Starter => Some(Tier::Pro),
            Tier::Pro => Some(Tier::Enterprise),
            Tier::Enterprise => None,
        }
    }
}

impl FromStr for Tier {
    type Err = TierParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| TierParseError(s.to_owned()))
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.display_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_case_insensitively_and_orders_by_upgrade_path() {
        assert_eq!("PRO".parse::<Tier>().unwrap(), Tier::Pro);
        assert!(Tier::Free < Tier::Starter && Tier::Pro < Tier::Enterprise);
        assert_eq!(Tier::Free.next(), Some(Tier::Starter));
        assert!("gold".parse::<Tier>().is_err());
    }
}
