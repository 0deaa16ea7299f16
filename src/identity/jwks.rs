//! Signing keys for bearer JWTs: a JWKS file or URL, cached, read again when a token
//! names a `kid` the cache lacks (at most once a minute per source).
