//! Per-organization API tokens for the customer routes (`/v1/...`).
//!
//! A token is `dyn_<org>_<64 hex digits>` (32 random bytes). The admin API
//! shows it once; the store keeps only its SHA-256. Checking a presented
//! token reads the hash of the org the token names and compares hashes in
//! constant time, so a token can only ever open its own org, and a rotated
//! token stops working as soon as the new hash is stored.

use actix_web::HttpRequest;
use dynabase_actors::{OrgId, Store};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{auth::bearer_token, error::ApiError};

const PREFIX: &str = "dyn_";

/// A new token for `org`.
pub fn generate(org: &OrgId) -> Result<String, getrandom::Error> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    Ok(format!("{PREFIX}{org}_{}", hex(&secret)))
}

/// The SHA-256 of `token`, hex.
pub fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The org named by a well-formed token (not yet verified).
fn org_of(token: &str) -> Option<OrgId> {
    // Org ids never contain `_`, so the first one after the prefix ends it.
    let (org, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    (secret.len() == 64).then_some(())?;
    OrgId::parse(org).ok()
}

/// The org whose token the request carries as `Authorization: Bearer`.
pub async fn authenticate(req: &HttpRequest, store: &dyn Store) -> Result<OrgId, ApiError> {
    let presented = bearer_token(req).ok_or(ApiError::Unauthorized)?;
    verify(presented, store).await
}

/// The org whose token `presented` is (from a header or the dashboard's
/// cookie).
pub async fn verify(presented: &str, store: &dyn Store) -> Result<OrgId, ApiError> {
    let org = org_of(presented).ok_or(ApiError::Unauthorized)?;
    let stored = store
        .api_token_hash(&org)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let matches: bool = hash(presented).as_bytes().ct_eq(stored.as_bytes()).into();
    if matches {
        Ok(org)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// The org a customer request is for: its API token decides (nothing in the
/// request can name another org), within the org's request limits.
pub async fn customer(req: &HttpRequest, state: &super::HttpState) -> Result<OrgId, ApiError> {
    let org = authenticate(req, state.store.as_ref()).await?;
    let tier = state
        .store
        .get_org(&org)
        .await?
        .ok_or(ApiError::Unauthorized)?
        .tier;
    state.customer_limits.check(&org, tier)?;
    Ok(org)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_org_and_hash_stably() {
        let org = OrgId::parse("acme-2").unwrap();
        let token = generate(&org).unwrap();
        assert_eq!(org_of(&token), Some(org.clone()));
        assert_ne!(generate(&org).unwrap(), token, "random");
        assert_eq!(hash(&token), hash(&token));
        assert_eq!(hash(&token).len(), 64);
        assert_eq!(org_of("dyn_acme_short"), None);
        assert_eq!(org_of("Bearer xyz"), None);
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
