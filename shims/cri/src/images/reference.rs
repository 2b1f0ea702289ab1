//! Image references (`[domain[:port]/]path[:tag][@algo:hex]`) parsed by hand, with Docker's
//! normalisation (`busybox` -> `docker.io/library/busybox:latest`).
//!
//! oci-spec's `Reference::from_str` compiles one large Unicode regex the first time it runs and
//! keeps it for the life of the process: about 5.7 MiB of automaton, more than the rest of the
//! idle daemon's heap. This parser follows the same grammar (distribution/reference) with a few
//! string scans and builds the `Reference` through its plain constructors.

use oci_client::Reference;

const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;
const HUB: &str = "docker.io";
const HUB_LEGACY: &str = "index.docker.io";

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("empty image reference")]
    Empty,
    #[error("invalid reference format")]
    Format,
    #[error("repository name must be lowercase")]
    Uppercase,
    #[error("repository name must not be more than {NAME_MAX} characters")]
    TooLong,
    #[error("invalid tag format")]
    Tag,
    #[error("invalid digest format")]
    Digest,
    #[error("invalid digest length")]
    DigestLength,
    #[error("unsupported digest algorithm")]
    DigestAlgorithm,
}

/// Parses and normalises a reference.
pub fn parse(s: &str) -> Result<Reference, RefError> {
    if s.is_empty() {
        return Err(RefError::Empty);
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(check_digest(d)?)),
        None => (s, None),
    };
    // A tag follows the last ':' that comes after the last '/' (a ':' before it is a port).
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let (n, t) = rest.split_at(last_slash + i);
            (n, Some(check_tag(&t[1..])?))
        }
        None => (rest, None),
    };
    let (domain, path) = split_domain(name);
    if let Some(d) = domain {
        check_domain(d)?;
    }
    check_path(path)?;
    let (registry, repository) = normalise(domain, path);
    if repository.len() > NAME_MAX {
        return Err(RefError::TooLong);
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.into(), d.into())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").into()),
    })
}

/// The first component is a domain when it has a '.' or a ':' or is `localhost`.
fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn normalise(domain: Option<&str>, path: &str) -> (String, String) {
    let registry = match domain {
        None | Some(HUB_LEGACY) => HUB,
        Some(d) => d,
    };
    let repository = if registry == HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    };
    (registry.to_string(), repository)
}

/// `host[:port]`: dot-separated labels of alphanumerics and inner hyphens.
fn check_domain(d: &str) -> Result<(), RefError> {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RefError::Format);
        }
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(RefError::Format)
    }
}

/// Slash-separated components of `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn check_path(path: &str) -> Result<(), RefError> {
    if path.is_empty() {
        return Err(RefError::Format);
    }
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(RefError::Uppercase);
    }
    for comp in path.split('/') {
        let b = comp.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return Err(RefError::Format);
        }
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &comp[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
            if !ok {
                return Err(RefError::Format);
            }
        }
    }
    Ok(())
}

/// `[\w][\w.-]{0,127}`.
fn check_tag(t: &str) -> Result<&str, RefError> {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = t.as_bytes();
    if b.is_empty()
        || b.len() > TAG_MAX
        || !word(b[0])
        || !b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
    {
        return Err(RefError::Tag);
    }
    Ok(t)
}

/// `algorithm:hex` with the hex length the algorithm implies.
fn check_digest(d: &str) -> Result<&str, RefError> {
    let (algo, hex) = d.split_once(':').ok_or(RefError::Digest)?;
    if algo.is_empty() || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RefError::Digest);
    }
    let want = match algo {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        a if a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+._-".contains(&b)) =>
        {
            return Err(RefError::DigestAlgorithm)
        }
        _ => return Err(RefError::Digest),
    };
    if hex.len() != want {
        return Err(RefError::DigestLength);
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    #[test]
    fn normalises_like_docker() {
        for (input, whole) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("test.com:tag", "docker.io/library/test.com:tag"),
            ("test.com:5000", "docker.io/library/test.com:5000"),
            ("test.com/repo:tag", "test.com/repo:tag"),
            ("test:5000/repo", "test:5000/repo:latest"),
            ("localhost/foo", "localhost/foo:latest"),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("foo/foo_bar.com:8080", "docker.io/foo/foo_bar.com:8080"),
            ("opensuse/leap:15.3", "docker.io/opensuse/leap:15.3"),
            (
                "lowercase:Uppercase",
                "docker.io/library/lowercase:Uppercase",
            ),
            (
                "127.0.0.1:5000/a/b-c__d.e---f:v1.0-x_y",
                "127.0.0.1:5000/a/b-c__d.e---f:v1.0-x_y",
            ),
        ] {
            assert_eq!(parse(input).unwrap().whole(), whole, "{input}");
        }
        let r = parse(&format!("docker.io/foo/bar:1.2@{D}")).unwrap();
        assert_eq!((r.tag(), r.digest()), (Some("1.2"), Some(D)));
        let r = parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.whole(), format!("docker.io/library/busybox@{D}"));
        assert_eq!(r.tag(), None);
    }

    #[test]
    fn matches_oci_spec_on_valid_and_invalid_input() {
        // The regex-based parser is the oracle for what is accepted (tests only).
        for input in [
            "busybox",
            "a/b/c:1",
            "Uppercase/x",
            "x/Upper",
            "-x",
            "x-",
            "a..b",
            "a___b",
            "a__b",
            "a----b",
            "a/",
            "/a",
            "a:",
            "a:-tag",
            "a:.tag",
            "ho-st.com/x",
            "-host.com/x",
            "host.com:/x",
            "host.com:12a/x",
            "a@sha256:abc",
            "a@md5:ffffffffffffffffffffffffffffffff",
            "a@sha256:fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "a:t@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "localhost:5000/x:y",
            "a b",
            "ä/x",
        ] {
            let ours = parse(input).map(|r| r.whole());
            let theirs = input.parse::<Reference>().map(|r| r.whole());
            if ours == Err(RefError::Uppercase) {
                // Docker refuses an upper-case repository; oci-spec lets a first component that
                // looks like a host name through when it is not one ("Uppercase/x").
                continue;
            }
            assert_eq!(
                ours.is_ok(),
                theirs.is_ok(),
                "{input}: {ours:?} vs {theirs:?}"
            );
            if let (Ok(a), Ok(b)) = (ours, theirs) {
                assert_eq!(a, b, "{input}");
            }
        }
        let long = format!("x/{}", "a".repeat(300));
        assert_eq!(parse(&long).unwrap_err(), RefError::TooLong);
        assert_eq!(parse("").unwrap_err(), RefError::Empty);
    }
}
