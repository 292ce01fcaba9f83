//! The bearer-token check of our HTTPS APIs (the stamp API, the router's `/v1` service API): one
//! place that reads `Authorization: Bearer <token>` and compares in constant time, so timing does
//! not reveal how much of a token matched.

use subtle::ConstantTimeEq;

/// The token an `Authorization` header presents, if it is a bearer token.
pub fn presented(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Whether `headers` present one of `accepted`. Every accepted token is compared (no early exit
/// on a match), each in constant time; an empty list accepts nothing.
pub fn accepts<'a>(headers: &http::HeaderMap, accepted: impl IntoIterator<Item = &'a str>) -> bool {
    let Some(token) = presented(headers) else {
        return false;
    };
    accepted
        .into_iter()
        .fold(subtle::Choice::from(0), |any, k| {
            any | token.as_bytes().ct_eq(k.as_bytes())
        })
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn only_a_listed_bearer_token_gets_through() {
        let accepted = ["first-token", "second-token"];
        assert!(accepts(&headers("Bearer second-token"), accepted));
        assert!(!accepts(&headers("Bearer second-toke"), accepted), "a prefix");
        assert!(
            !accepts(&headers("Bearer second-token-and-more"), accepted),
            "longer"
        );
        assert!(
            !accepts(&headers("bearer first-token"), accepted),
            "the scheme is case-sensitive here"
        );
        assert!(!accepts(&headers("Basic Zmlyc3QtdG9rZW4="), accepted));
        assert!(!accepts(&http::HeaderMap::new(), accepted));
        assert!(
            !accepts(&headers("Bearer "), [""; 0]),
            "no tokens: nothing gets through"
        );
        assert_eq!(presented(&headers("Bearer abc")), Some("abc"));
    }
}
