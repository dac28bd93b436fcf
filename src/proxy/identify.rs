//! Which organization a connection is for: `<role>.<org>` in the user name,
//! or `<org>.<domain>` in the TLS SNI host name.

use dynabase_actors::OrgId;

use super::client_error::ClientError;

/// The organization and the role to use upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub org: OrgId,
    pub role: String,
}

/// `user` from the StartupMessage, `sni` from TLS, `domain` from configuration.
pub fn identify(
    user: &str,
    sni: Option<&str>,
    domain: Option<&str>,
) -> Result<Identity, ClientError> {
    if let Some((role, org)) = user.rsplit_once('.') {
        if !role.is_empty() {
            if let Ok(org) = OrgId::parse(org) {
                return Ok(Identity {
                    org,
                    role: role.to_owned(),
                });
            }
        }
    }
    let from_sni = sni
        .zip(domain)
        .and_then(|(host, domain)| host.strip_suffix(domain)?.strip_suffix('.'))
        .and_then(|org| OrgId::parse(org).ok());
    match from_sni {
        Some(org) if !user.is_empty() => Ok(Identity {
            org,
            role: user.to_owned(),
        }),
        _ => Err(match user.rsplit_once('.') {
            Some((_, org)) => ClientError::UnknownOrganization(org.to_owned()),
            None => ClientError::NoOrganization,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_name_carries_role_and_org() {
        let id = identify("app.user.acme", None, None).unwrap();
        assert_eq!((id.role.as_str(), id.org.as_str()), ("app.user", "acme"));
    }

    #[test]
    fn sni_names_the_org_when_the_user_does_not() {
        let id = identify("app", Some("acme.db.example.com"), Some("db.example.com")).unwrap();
        assert_eq!((id.role.as_str(), id.org.as_str()), ("app", "acme"));
        assert_eq!(
            identify("app", Some("acme.other.com"), Some("db.example.com")),
            Err(ClientError::NoOrganization)
        );
    }

    #[test]
    fn no_org_is_refused() {
        assert_eq!(
            identify("app", None, None),
            Err(ClientError::NoOrganization)
        );
        assert_eq!(
            identify(".acme", None, None),
            Err(ClientError::UnknownOrganization("acme".into()))
        );
        assert_eq!(
            identify("app.Not_Valid", None, None),
            Err(ClientError::UnknownOrganization("Not_Valid".into()))
        );
    }
}
