//! The Secrets the operator writes for each stamp and the router reads: their names and keys are a
//! contract between the two, so both take them from here.

/// Holds the bearer token the router and operator present to the stamp API.
pub fn token_secret_name(stamp: &str) -> String {
    format!("{stamp}-api-token")
}

/// Holds the certificate the operator issued for the stamp's in-cluster names, its key and the
/// cluster CA. The stamp API always serves it; the hub's device port too, unless the stamp names the
/// user's own Secret (`spec.hub.tls.secretName`).
pub fn hub_tls_secret_name(stamp: &str) -> String {
    format!("{stamp}-hub-tls")
}

/// Key of the policies document in a policies Secret (`spec.hub.policies.secretName`, and the
/// chart's `router.policies.secretName`).
pub const POLICIES_KEY: &str = "policies.json";
/// Key of the token in the token Secret.
pub const TOKEN_KEY: &str = "token";
/// Key of the issuing CA's certificate in the hub TLS Secret.
pub const CA_KEY: &str = "ca.crt";
