//! The method a request acts as. Frameworks that could sit upstream read a method
//! override (`X-HTTP-Method-Override` and kin, Rails' and Express's `_method`) as the
//! method; the rules must weigh the same method, or refuse the request.

use http::HeaderMap;

/// Why a method override was refused (answered `400 bad_request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    /// A header value that is not text.
    #[error("{0} is not valid text")]
    NotText(&'static str),
    /// A value that is not a method token.
    #[error("{0} does not name a method")]
    NotAMethod(&'static str),
    /// A method the upstream does not accept (`TRACE`, `TRACK`, `CONNECT` by default).
    #[error("method {0} is not allowed (it echoes the request, injected credentials included, or opens a tunnel)")]
    NotAllowed(String),
    /// Two overrides name different methods.
    #[error("method override headers disagree")]
    Disagree,
}

/// Headers that name a method other than the request line's (and kin).
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The method a request acts as: the request line's, or the one a method-override
/// header (or a `_method` query parameter, as Rails, Laravel and Express read it)
/// names. Several overrides that disagree are refused.
pub fn effective_method(
    method: &str,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<String, MethodError> {
    let mut named: Option<String> = None;
    let from_headers = METHOD_OVERRIDE_HEADERS.iter().flat_map(|h| {
        headers.get_all(*h).iter().map(move |v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| MethodError::NotText(h))
                .map(|v| (*h, v))
        })
    });
    let from_query = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "_method")
        .map(|(_, v)| Ok(("_method", v.into_owned())));
    for item in from_headers.chain(from_query) {
        let (h, v) = item?;
        {
            let v = v.trim().to_ascii_uppercase();
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(MethodError::NotAMethod(h));
            }
            match &named {
                Some(prev) if *prev != v => {
                    return Err(MethodError::Disagree);
                }
                _ => named = Some(v),
            }
        }
    }
    Ok(named.unwrap_or_else(|| method.to_string()))
}
