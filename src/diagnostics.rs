//! The check commands that need more than one line: `fedgate check config` and
//! `fedgate check remote`. They change nothing, and they run the code they check rather than
//! a copy of it, so that what they report is what `fedgate run` would do.
//!
//! `fedgate check config FILE` ([`check_config`]):
//! 1. loads the file as `fedgate run` does, collecting every validation problem
//!    ([`Config::problems`]) instead of the first;
//! 2. prints each problem with its key and its fix (exit 64), or a summary line and the
//!    effective configuration: every key with the value in force, defaults included, as TOML
//!    that loads again, with secrets shown as `"<redacted>"` (exit 0);
//! 3. warns on stderr about the dialback secret file ([`secret_file_warnings`]): missing,
//!    unusable, or readable by others.
//!
//! `fedgate check remote DOMAIN` ([`RemoteCheck`]):
//! 1. asks our own federation policy whether we federate with DOMAIN at all;
//! 2. builds the s2s context the gateway builds ([`S2sContext::new`]) from the same
//!    configuration, and [probes](outbound::probe) DOMAIN as an outbound session would: DNS,
//!    TCP, TLS and the certificate check, stream features, SASL EXTERNAL or a dialback round
//!    trip, then `</stream:stream>`;
//! 3. prints the steps, the TLS session, the peer's certificate chain (subject, issuer, names
//!    against DOMAIN, expiry, the SPKI digest a pin needs), the features and the
//!    authentication, then a verdict and, for the first step that failed, the fix.
//!
//! A dialback round trip is real: the remote server verifies our key by connecting back to our
//! domain's authoritative server, which is the *running* fedgate of this deployment (it shares
//! the dialback secret file). The check itself listens nowhere.

use std::fmt::{self, Write as _};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AuthRequirement, Config, ConfigError, FederationMode};
use crate::dialback::{DialbackError, DialbackSecret};
use crate::dns::{ResolveError, Resolver};
use crate::metrics::Metrics;
use crate::policy::{PeerSecurity, Policy, Refused};
use crate::router::Router;
use crate::s2s::connect::{describe_features, ConnectError, Stage};
use crate::s2s::dialback::connect_back::{self, InstanceAnswer};
use crate::s2s::dialback::Verdict;
use crate::s2s::outbound::{self, AuthMethod, OutboundError, Probe};
use crate::s2s::trace::Trace;
use crate::s2s::S2sContext;
use crate::tls::{CertProblem, CertVerdict, PresentedNames, ReferenceId, Tls, TlsInfo};

/// How a check ended; [`Exit::code`] is the process's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything checked works.
    Ok,
    /// A step failed (the report says which, and the fix).
    Failed,
    /// The command line or the configuration is wrong (`EX_USAGE`).
    Usage,
}

impl Exit {
    /// The process exit status: 0, 1, or 64 (`EX_USAGE` of sysexits.h).
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Usage => 64,
        }
    }
}

/// `fedgate check config FILE`: on `out` the summary and the effective configuration, or on
/// `err` every problem with its key and fix. Write errors on the terminal are ignored.
pub fn check_config(file: &Path, out: &mut impl Write, err: &mut impl Write) -> Exit {
    let config = match Config::load_all_problems(file) {
        Ok(config) => config,
        Err(problems) => {
            let _ = err.write_all(problems_text(file, &problems).as_bytes());
            return Exit::Usage;
        }
    };
    let effective = match toml::to_string(&config) {
        Ok(text) => text,
        Err(e) => {
            let _ = writeln!(err, "Error: cannot show the effective configuration: {e}");
            return Exit::Failed;
        }
    };
    for warning in secret_file_warnings(&config.s2s.dialback_secret_file) {
        let _ = writeln!(err, "warning: {warning}");
    }
    let domains: Vec<&str> = config.local_domains().collect();
    // Comment lines, so that the whole output is the effective configuration as TOML.
    let _ = write!(
        out,
        "# {}: OK — serves {}; s2s on {:?}; components on {}\n\
         # The effective configuration: every key with the value in force (defaults filled in,\n\
         # relative paths resolved, domains canonical); secrets are shown as \"<redacted>\".\n\n\
         {effective}",
        file.display(),
        domains.join(", "),
        config.s2s.listen,
        config.component.listen,
    );
    Exit::Ok
}

/// What is wrong with the dialback secret file without making the configuration invalid:
/// missing (the first `fedgate run` creates one, which must then be copied to every other
/// instance of the deployment, or their keys do not verify each other), unreadable or too
/// short (`fedgate run` would refuse to start), or open to group or others (anyone who reads
/// it can authenticate as every domain of this deployment).
pub fn secret_file_warnings(path: &Path) -> Vec<String> {
    let mut warnings = Vec::new();
    match DialbackSecret::load(path) {
        Ok(_) => {}
        Err(DialbackError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            warnings.push(format!(
                "the dialback secret file {} does not exist yet: `fedgate run` creates it at its first start. With several gateway instances, create it once and copy the same file (mode 0600) to every instance, or keys made by one do not verify on another",
                path.display()
            ));
            return warnings;
        }
        Err(e) => warnings.push(format!(
            "{e}: `fedgate run` will refuse to start; fix the file or remove it so that a new secret is made"
        )),
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                warnings.push(format!(
                    "the dialback secret file {} has mode {mode:04o}: anyone who can read it can authenticate as this deployment's domains; run `chmod 600 {}`",
                    path.display(),
                    path.display()
                ));
            }
        }
    }
    warnings
}

/// The problems of a configuration file for a person: a file that does not load is one line;
/// validation problems are one block each, the key and what is wrong, then the fix.
fn problems_text(file: &Path, problems: &[ConfigError]) -> String {
    let invalid: Vec<(&str, &str, &str)> = problems
        .iter()
        .filter_map(|p| match p {
            ConfigError::Invalid {
                key, problem, fix, ..
            } => Some((key.as_str(), problem.as_str(), fix.as_str())),
            _ => None,
        })
        .collect();
    if invalid.len() < problems.len() {
        // Unreadable or unparsable: serde reports one error at a time.
        return problems.iter().map(|p| format!("Error: {p}\n")).collect();
    }
    let mut text = format!(
        "Error: {}: {} problem{}\n",
        file.display(),
        invalid.len(),
        if invalid.len() == 1 { "" } else { "s" }
    );
    for (key, problem, fix) in invalid {
        let _ = writeln!(text, "  {key}: {problem}\n    fix: {fix}");
    }
    text
}

/// `fedgate check remote DOMAIN`, ready to run: the domain, who we are, the configuration.
pub struct RemoteCheck {
    file: PathBuf,
    config: Config,
    /// The remote domain, canonical.
    domain: String,
    /// The local domain we connect as.
    local: String,
    /// DOMAIN is one of ours: check that its instances share our dialback secret instead.
    own: bool,
}

/// A command line or configuration that `check remote` cannot work with (exit 64).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// DOMAIN (or the `--from` value) is not a valid domain name.
    #[error("`{given}` is not a domain: {reason}; give a domain such as example.org")]
    Domain {
        /// The value as given on the command line.
        given: String,
        /// Why it is not a domain.
        reason: String,
    },
    /// `--from` names a domain that is not one of the configuration's local domains.
    #[error("--from {given}: not a domain of {file}; use one of {domains}")]
    From {
        /// The `--from` value as given.
        given: String,
        /// The configuration file, as shown to the user.
        file: String,
        /// The local domains of the file, comma-separated, to choose from.
        domains: String,
    },
    /// The configuration file does not load or is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Our certificates or keys cannot be loaded.
    #[error("TLS: {0}; fix the file, as `fedgate run` would need to")]
    Tls(#[from] crate::tls::TlsError),
    /// The DNS resolver cannot be set up from the system or `[dns]` configuration.
    #[error("{0}; check the system resolver configuration, or set [dns] nameservers")]
    Resolver(#[from] ResolveError),
}

impl RemoteCheck {
    /// Checks the command line and loads the configuration: `from` defaults to the first
    /// local domain.
    pub fn prepare(
        domain: &str,
        file: &Path,
        from: Option<&str>,
    ) -> Result<RemoteCheck, UsageError> {
        let normalize = |given: &str| {
            crate::jid::normalize_domain(given)
                .map(|d| d.into_owned())
                .map_err(|e| UsageError::Domain {
                    given: given.to_string(),
                    reason: e.to_string(),
                })
        };
        let remote = normalize(domain)?;
        let config = Config::load(file)?;
        let locals: Vec<&str> = config.local_domains().collect();
        let shown = file.display().to_string();
        let own = locals.contains(&remote.as_str());
        let local = match from {
            Some(given) => {
                let local = normalize(given)?;
                if !locals.contains(&local.as_str()) {
                    return Err(UsageError::From {
                        given: given.to_string(),
                        file: shown,
                        domains: locals.join(", "),
                    });
                }
                local
            }
            // Validation guarantees at least one backend.
            None => locals.first().map(|d| d.to_string()).unwrap_or_default(),
        };
        Ok(RemoteCheck {
            file: file.to_owned(),
            config,
            domain: remote,
            local,
            own,
        })
    }

    /// Probes the remote domain and returns what happened, step by step; for one of our own
    /// domains, asks each of its instances to verify a key ([`InstancesReport`]).
    pub async fn run(self) -> Result<Report, UsageError> {
        let RemoteCheck {
            file,
            config,
            domain,
            local,
            own,
        } = self;
        let mut notes = Vec::new();
        let secret_file = config.s2s.dialback_secret_file.clone();
        let secret = match DialbackSecret::load(&secret_file) {
            Ok(secret) => secret,
            Err(e) => {
                notes.push(match &e {
                    DialbackError::Io { source, .. }
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        format!(
                            "the dialback secret file {} does not exist yet (fedgate creates it at its first start): a dialback key from this check cannot be verified",
                            secret_file.display()
                        )
                    }
                    _ => format!("{e}; a dialback key from this check cannot be verified"),
                });
                // A key nobody can verify, so that the rest of the check still runs.
                DialbackSecret::from_bytes(&rand::random::<[u8; 32]>())
            }
        };
        // Certificates fedgate would create at its first start are left uncreated: this check
        // changes nothing, so it presents no certificate for their domains.
        let mut tls_config = config.tls.clone();
        tls_config.certificate.retain(|c| {
            let missing = c.self_signed && !(c.cert.is_file() && c.key.is_file());
            if missing {
                notes.push(format!(
                    "{} does not exist yet (self_signed = true: fedgate creates it at its first start); checked without a certificate for {}",
                    c.cert.display(),
                    c.domains.join(", ")
                ));
            }
            !missing
        });
        let tls = Arc::new(Tls::from_tls_config(&tls_config)?);
        let resolver = Resolver::from_config(&config)?;
        let router = Arc::new(Router::new(
            config.local_domains().map(str::to_string),
            config.s2s.queue_max_bytes,
            Policy::from_config(&config.federation),
            Metrics::register(),
        ));
        let ctx = Arc::new(S2sContext::new(
            &config,
            router,
            tls.clone(),
            resolver,
            Arc::new(secret),
            CancellationToken::new(),
            TaskTracker::new(),
        ));
        if own {
            return Ok(Report::Instances(
                InstancesReport::run(&ctx, domain, secret_file, notes).await,
            ));
        }
        let (trace, result) = outbound::probe(ctx.clone(), &local, &domain).await;
        Ok(Report::Remote(Box::new(RemoteReport {
            policy: ctx.router.policy().check(&domain),
            mode: config.federation.mode,
            security: ctx.security.load().peer(&domain),
            local_certificate_valid: tls.has_valid_certificate(&local),
            file,
            domain,
            local,
            secret_file,
            notes,
            trace,
            result,
        })))
    }
}

/// What `check remote` found: a remote domain's probe, or our own instances' secret.
pub enum Report {
    /// A remote domain: the probe's steps and verdict (boxed: it is far larger than the
    /// other variant).
    Remote(Box<RemoteReport>),
    /// One of our own domains: whether its instances share our dialback secret.
    Instances(InstancesReport),
}

impl Report {
    /// The exit status the report calls for.
    pub fn exit(&self) -> Exit {
        match self {
            Report::Remote(r) => r.exit(),
            Report::Instances(r) => r.exit(),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Remote(r) => r.fmt(f),
            Report::Instances(r) => r.fmt(f),
        }
    }
}

/// `check remote` for one of our own domains: every instance its DNS lists is asked, as a
/// receiving server would ask by dialback, to verify a key made with this machine's secret
/// file (it must say valid) and a key made with another secret (it must say invalid). An
/// instance with another secret file verifies nobody's keys but its own.
pub struct InstancesReport {
    domain: String,
    secret_file: PathBuf,
    notes: Vec<String>,
    answers: Result<Vec<InstanceAnswer>, ResolveError>,
}

/// The receiving domain named in the check's `<db:verify/>` requests: reserved (RFC 2606),
/// so that a key made for it is good for nothing else.
const CHECK_RECEIVER: &str = "fedgate-check.invalid";

impl InstancesReport {
    async fn run(
        ctx: &S2sContext,
        domain: String,
        secret_file: PathBuf,
        notes: Vec<String>,
    ) -> InstancesReport {
        let stream_id = crate::dialback::new_stream_id();
        let ours = ctx.secret.key(CHECK_RECEIVER, &domain, &stream_id);
        let other = DialbackSecret::from_bytes(&rand::random::<[u8; 32]>());
        let wrong = other.key(CHECK_RECEIVER, &domain, &stream_id);
        let answers =
            connect_back::ask_each(ctx, CHECK_RECEIVER, &domain, &stream_id, &[ours, wrong]).await;
        InstancesReport {
            domain,
            secret_file,
            notes,
            answers,
        }
    }

    /// Whether every instance answered valid for our key and invalid for the other.
    fn shared_by_all(&self) -> bool {
        matches!(&self.answers, Ok(list) if !list.is_empty() && list.iter().all(|a| matches!(
            a.verdicts.as_deref(),
            Ok([Verdict::Valid, Verdict::Invalid])
        )))
    }

    /// [`Exit::Ok`] when every instance shares our secret, else [`Exit::Failed`].
    pub fn exit(&self) -> Exit {
        if self.shared_by_all() {
            Exit::Ok
        } else {
            Exit::Failed
        }
    }
}

impl fmt::Display for InstancesReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} is one of our domains: asking each of its instances to verify a dialback key made with {}",
            self.domain,
            self.secret_file.display()
        )?;
        for note in &self.notes {
            writeln!(f, "Note: {note}")?;
        }
        let answers = match &self.answers {
            Ok(answers) => answers,
            Err(e) => {
                writeln!(f, "Verdict: FAILED at DNS: {e}")?;
                return writeln!(
                    f,
                    "Fix: publish SRV or A/AAAA records for {} that list every instance",
                    self.domain
                );
            }
        };
        for a in answers {
            match a.verdicts.as_deref() {
                Ok([Verdict::Valid, Verdict::Invalid]) => {
                    writeln!(f, "ok   {}: shares this secret", a.label)?
                }
                Ok([Verdict::Invalid, _]) => writeln!(
                    f,
                    "FAIL {}: refuses keys made with this secret: it has another dialback secret file",
                    a.label
                )?,
                Ok(_) => writeln!(
                    f,
                    "FAIL {}: accepts a key made with another secret: it does not check keys",
                    a.label
                )?,
                Err(why) => writeln!(f, "FAIL {}: {why}", a.label)?,
            }
        }
        if self.shared_by_all() {
            writeln!(
                f,
                "Verdict: OK — all {} instance(s) of {} share the dialback secret",
                answers.len(),
                self.domain
            )
        } else {
            writeln!(
                f,
                "Verdict: FAILED — not every instance of {} verifies this machine's keys",
                self.domain
            )?;
            writeln!(
                f,
                "Fix: copy {} (mode 0600) to every instance, as its s2s.dialback_secret_file, and restart or reload them",
                self.secret_file.display()
            )
        }
    }
}

/// What `check remote` found about a remote domain, printed by its `Display`.
pub struct RemoteReport {
    file: PathBuf,
    domain: String,
    local: String,
    /// Whether our own `[federation]` admits the domain.
    policy: Result<(), Refused>,
    mode: FederationMode,
    /// How we require the domain to secure and authenticate its streams.
    security: Arc<PeerSecurity>,
    /// Whether we hold a certificate for `local` that our own trust anchors accept (without
    /// one we do not try SASL EXTERNAL).
    local_certificate_valid: bool,
    secret_file: PathBuf,
    /// What the check could not do as `fedgate run` would (a missing secret file, say).
    notes: Vec<String>,
    trace: Trace,
    result: Result<Probe, OutboundError>,
}

/// The step of `fedgate check remote` a failure is reported at ("FAILED at …").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckStep {
    Dns,
    Tcp,
    Tls,
    Certificate,
    Stream,
    Authentication,
    Policy,
}

impl fmt::Display for CheckStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckStep::Dns => "DNS",
            CheckStep::Tcp => "TCP",
            CheckStep::Tls => "TLS",
            CheckStep::Certificate => "certificate",
            CheckStep::Stream => "stream",
            CheckStep::Authentication => "authentication",
            CheckStep::Policy => "policy",
        })
    }
}

impl RemoteReport {
    /// Whether the remote domain authenticated us, and our policy admits it.
    pub fn exit(&self) -> Exit {
        if self.result.is_ok() && self.policy.is_ok() {
            Exit::Ok
        } else {
            Exit::Failed
        }
    }

    /// The TLS session the probe got to, if any: from the link, or from a certificate
    /// refusal.
    fn tls(&self) -> Option<(&TlsInfo, Option<CertVerdict>, &str)> {
        match &self.result {
            Ok(probe) => probe
                .security
                .tls
                .as_ref()
                .map(|tls| (tls, probe.security.verdict.clone(), probe.label.as_str())),
            Err(OutboundError::Connect(ConnectError::Certificate {
                target,
                problem,
                tls,
            })) => Some((tls, Some(CertVerdict::Invalid(problem.clone())), target)),
            Err(_) => None,
        }
    }

    /// The leaf certificate's SPKI SHA-256 in base64, the form `pin_sha256` takes.
    fn leaf_pin(&self) -> Option<String> {
        use base64::Engine as _;
        let (tls, _, _) = self.tls()?;
        let (_, cert) = x509_parser::parse_x509_certificate(tls.peer_chain.first()?).ok()?;
        Some(base64::engine::general_purpose::STANDARD.encode(crate::tls::spki_sha256(&cert)))
    }

    fn write_certificate(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((tls, verdict, target)) = self.tls() else {
            return Ok(());
        };
        writeln!(f, "\nTLS")?;
        writeln!(
            f,
            "  {}, cipher {}, {}",
            tls.version,
            tls.cipher,
            match &tls.alpn {
                Some(alpn) => format!("direct TLS with ALPN {alpn}"),
                None => "no ALPN".to_string(),
            }
        )?;
        writeln!(
            f,
            "\nCertificate: {} in the chain presented by {target}",
            tls.peer_chain.len()
        )?;
        let reference = ReferenceId::new(&self.domain);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        for (i, der) in tls.peer_chain.iter().enumerate() {
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
                writeln!(f, "  [{i}] cannot be parsed")?;
                continue;
            };
            let named = |name: String| {
                if name.is_empty() {
                    "(empty)".to_string()
                } else {
                    name
                }
            };
            writeln!(f, "  [{i}] subject: {}", named(cert.subject().to_string()))?;
            writeln!(f, "      issuer:  {}", named(cert.issuer().to_string()))?;
            if i == 0 {
                let names = PresentedNames::from_cert(&cert);
                let matches = if names.matches(&reference) {
                    format!("match {}", self.domain)
                } else {
                    format!("do not match {}", self.domain)
                };
                writeln!(f, "      names:   {} ({matches})", names.describe())?;
            }
            let not_after = cert.validity().not_after.timestamp();
            let days = (not_after - now).div_euclid(86_400);
            let left = if not_after < now {
                format!("expired {} days ago", -days)
            } else {
                format!("{days} days left")
            };
            writeln!(f, "      expires: {} ({left})", rfc3339(not_after))?;
            if i == 0 {
                if let Some(pin) = self.leaf_pin() {
                    writeln!(f, "      SPKI sha256: {pin}")?;
                }
            }
        }
        if let Some(verdict) = verdict {
            writeln!(f, "  for {}: {verdict}", self.domain)?;
        }
        Ok(())
    }

    /// The verdict's fix for the error the probe ended with, and the step it failed at.
    fn failure(&self, e: &OutboundError) -> (CheckStep, String) {
        let (domain, local) = (&self.domain, &self.local);
        let file = self.file.display();
        let check_dns = format!("`fedgate check dns {domain} --config {file}` shows every record");
        match e {
            OutboundError::Resolve(r) | OutboundError::Connect(ConnectError::Resolve(r)) => {
                (CheckStep::Dns, self.dns_fix(r, &check_dns))
            }
            OutboundError::Connect(c) => self.connect_failure(c, &check_dns),
            OutboundError::DialbackRefused { .. } => (
                CheckStep::Authentication,
                format!(
                    "{domain} could not verify our dialback key: it asked {local}'s authoritative server, which is the running fedgate of this deployment, and that server did not confirm the key. \
                     Is fedgate running for {local}, reachable from {domain} (the SRV or A/AAAA records of {local}, port 5269), and using the same dialback secret file as this check ({})?",
                    self.secret_file.display()
                ),
            ),
            OutboundError::ExternalRefused { .. } => (
                CheckStep::Authentication,
                format!(
                    "{domain} does not accept our certificate for {local}: its operator must trust the CA that issued it, and the certificate must name {local}; \
                     or allow dialback for it: [[federation.peer]] domain = \"{domain}\" auth = \"any\" in {file}"
                ),
            ),
            OutboundError::NoAuthentication { .. } => (CheckStep::Authentication, self.no_method_fix()),
            OutboundError::Policy { reason } => (
                CheckStep::Policy,
                format!("{reason}: change [federation] in {file} if {domain} should be allowed"),
            ),
            OutboundError::WindowClosed { .. } => (
                CheckStep::Stream,
                format!("the attempt did not finish within s2s.retry_window: the last step it shows is the slow one; a longer window in {file} waits for it longer"),
            ),
            OutboundError::Lost { .. } | OutboundError::Shutdown => (
                CheckStep::Stream,
                "try again; if it keeps failing, the remote operator's logs say why".to_string(),
            ),
        }
    }

    fn dns_fix(&self, e: &ResolveError, check_dns: &str) -> String {
        let domain = &self.domain;
        let file = self.file.display();
        match e {
            ResolveError::NoRecords { .. } => format!(
                "publish an SRV record for {domain}'s XMPP server, e.g. `_xmpp-server._tcp.{domain}. 3600 IN SRV 5 0 5269 xmpp.{domain}.` with an A/AAAA record for xmpp.{domain}, \
                 or at least an A/AAAA record for {domain} itself (then port 5269); if the name is misspelt, check the address you were given; \
                 to reach a server DNS does not know (a test, a split horizon), add [[s2s.route]] domain = \"{domain}\" target = \"host:5269\" to {file}"
            ),
            ResolveError::NoService { .. } => format!(
                "{domain} says with a \".\" SRV target that it does not federate; only its operator can change that, by publishing a real target"
            ),
            ResolveError::NoAddress { host } => format!(
                "publish an A or AAAA record for {host}, or point the SRV record at a host that has one; {check_dns}"
            ),
            ResolveError::Lookup { .. } => format!(
                "the resolver did not answer: check [dns] nameservers in {file} (or /etc/resolv.conf without it) and that port 53 towards it is open; retry, since this may pass"
            ),
        }
    }

    fn connect_failure(&self, e: &ConnectError, check_dns: &str) -> (CheckStep, String) {
        let domain = &self.domain;
        let local = &self.local;
        let file = self.file.display();
        match e {
            ConnectError::Resolve(r) => (CheckStep::Dns, self.dns_fix(r, check_dns)),
            ConnectError::Connect { target, reason } if reason.contains("refused") => (
                CheckStep::Tcp,
                format!(
                    "nothing listens on {target}: the remote server is down or listens on another port; its operator must start it, or correct the port in the SRV record; {check_dns}"
                ),
            ),
            ConnectError::Connect { target, .. } => (
                CheckStep::Tcp,
                format!(
                    "no connection to {target}: a firewall drops the traffic (ours outbound, or theirs inbound on that port), or the address is wrong; {check_dns}"
                ),
            ),
            ConnectError::Timeout {
                stage: Stage::Authentication,
                target,
                after,
            } => (
                CheckStep::Authentication,
                format!(
                    "{target} did not answer our authentication within {after:?}: with dialback it first connects back to {local}'s server, so a connection from {domain} to {local} on port 5269 that hangs (a firewall) hangs this too"
                ),
            ),
            ConnectError::Timeout { target, after, .. } => (
                CheckStep::Stream,
                format!(
                    "{target} accepted the connection but did not complete the stream within {after:?}: is it an XMPP server on that port? \
                     A direct TLS port reached as STARTTLS (or the reverse) hangs like this: `_xmpps-server` SRV records are for direct TLS, `_xmpp-server` for STARTTLS; {check_dns}"
                ),
            ),
            ConnectError::PeerStreamError { target, error } => {
                let step = if self.failed_in_authentication(e) {
                    CheckStep::Authentication
                } else {
                    CheckStep::Stream
                };
                use crate::xml::error::StreamErrorCondition as C;
                let fix = match &error.condition {
                    Some(C::HostUnknown | C::HostGone) => format!(
                        "{target} does not serve {domain}: DNS points at a server that is not configured for {domain}; its operator must add {domain} there, or correct the DNS records; {check_dns}"
                    ),
                    Some(C::RemoteConnectionFailed) => format!(
                        "{domain} could not connect back to {local}'s server to verify our dialback key: is fedgate running for {local} and reachable from {domain} on port 5269?"
                    ),
                    Some(C::PolicyViolation | C::NotAuthorized) => format!(
                        "{domain} refuses us by its own policy{}; ask its operator (it may require a valid certificate for {local}, or keep an allowlist)",
                        error.text.as_deref().map(|t| format!(" (\"{t}\")")).unwrap_or_default()
                    ),
                    _ => format!(
                        "{target} ended the stream; its operator's logs for {local} say why"
                    ),
                };
                (step, fix)
            }
            ConnectError::Stream { target, .. } => (
                if self.failed_in_authentication(e) {
                    CheckStep::Authentication
                } else {
                    CheckStep::Stream
                },
                format!(
                    "{target} does not behave as an XMPP server should; is the port right? {check_dns}; the remote operator's logs say more"
                ),
            ),
            ConnectError::TlsUnavailable { target, .. } => (
                CheckStep::Tls,
                format!(
                    "{target} offers no STARTTLS: its operator must enable TLS with a certificate for {domain}; on a network you trust, [[federation.peer]] domain = \"{domain}\" tls = \"optional\" in {file} allows clear text for this peer alone"
                ),
            ),
            ConnectError::Tls { target, .. } => (
                CheckStep::Tls,
                format!(
                    "the TLS handshake with {target} failed: its TLS setup is broken (a key that does not match its certificate, no TLS 1.2 or 1.3), or a port that is not what its SRV record says (direct TLS or STARTTLS); the remote operator must fix it"
                ),
            ),
            ConnectError::Certificate {
                target, problem, ..
            } => (CheckStep::Certificate, self.certificate_fix(target, problem)),
        }
    }

    /// Whether `e` ended the authentication (rather than the stream's opening): the trace has
    /// its `authentication:` line.
    fn failed_in_authentication(&self, e: &ConnectError) -> bool {
        let line = format!("authentication: {e}");
        self.trace.steps.iter().any(|s| !s.ok && s.what == line)
    }

    /// What to do about a certificate that is not valid for the domain: the remote operator's
    /// fix first, then what can be changed on our side, if anything.
    fn certificate_fix(&self, target: &str, problem: &CertProblem) -> String {
        let domain = &self.domain;
        let file = self.file.display();
        let pin = self
            .leaf_pin()
            .unwrap_or_else(|| "<SPKI sha256>".to_string());
        let why_required = if !self.security.pins.is_empty() {
            "a pin is configured for it".to_string()
        } else if self.security.auth == AuthRequirement::External {
            "auth = \"external\" for it".to_string()
        } else {
            "secure_auth is on for it".to_string()
        };
        let dialback_instead = if self.security.pins.is_empty()
            && self.security.auth != AuthRequirement::External
            && self.security.secure_auth
        {
            format!(
                "; or accept dialback over TLS from it without a valid certificate (XEP-0344): [[federation.peer]] domain = \"{domain}\" secure_auth = false in {file} ({why_required} now)"
            )
        } else {
            String::new()
        };
        match problem {
            CertProblem::NameMismatch { presented, .. } => format!(
                "the certificate presented by {target} is for {presented}, not {domain}: the remote operator must install a certificate that names {domain} (DNS:{domain}, SRVName _xmpp-server.{domain} or XmppAddr {domain}), \
                 or, if DNS sends us to a host that does not serve {domain}, correct the records (pinning its key would not help: fedgate checks the name of a pinned certificate too){dialback_instead}"
            ),
            CertProblem::SelfSigned | CertProblem::UnknownIssuer => format!(
                "the certificate presented by {target} is not issued by a CA we trust: the remote operator should use one from a public CA (Let's Encrypt, say) for {domain}; \
                 or add its CA to [tls] ca_files; or, once its operator confirms the key out of band, pin it: [[federation.peer]] domain = \"{domain}\" pin_sha256 = [\"{pin}\"] in {file}{dialback_instead}"
            ),
            CertProblem::Expired => format!(
                "the certificate presented by {target} has expired: the remote operator must renew it (and check that renewals reach the XMPP server){dialback_instead}"
            ),
            CertProblem::NotYetValid => format!(
                "the certificate presented by {target} is not valid yet: check the clocks, ours and the remote's"
            ),
            CertProblem::WrongPurpose => format!(
                "the certificate presented by {target} does not allow server use: the remote operator needs one with the serverAuth extended key usage{dialback_instead}"
            ),
            CertProblem::PinMismatch => format!(
                "the key of the certificate presented by {target} (SPKI sha256 {pin}) is not among the pin_sha256 of [[federation.peer]] {domain} in {file}: if its operator confirms the new key, replace the pin with it"
            ),
            CertProblem::NoCertificate => format!(
                "{target} presented no certificate: its operator must configure one for {domain}{dialback_instead}"
            ),
            _ => format!(
                "the certificate presented by {target} is unusable: the remote operator must replace it{dialback_instead}"
            ),
        }
    }

    fn no_method_fix(&self) -> String {
        let (domain, local) = (&self.domain, &self.local);
        let file = self.file.display();
        let ours = if self.local_certificate_valid {
            String::new()
        } else {
            format!(
                "we hold no certificate for {local} that our own trust anchors accept ([[tls.certificate]] for {local}, [tls] ca_files and webpki_roots in {file}), so we do not try SASL EXTERNAL; "
            )
        };
        match self.security.auth {
            AuthRequirement::External => format!(
                "{ours}SASL EXTERNAL is required for {domain}: it must offer it to us, trusting our certificate's CA; or allow dialback: [[federation.peer]] domain = \"{domain}\" auth = \"any\" in {file}"
            ),
            AuthRequirement::Dialback => format!(
                "dialback is required for {domain} ([[federation.peer]] auth = \"dialback\" in {file}) and it does not offer it: allow SASL EXTERNAL with auth = \"any\", or ask its operator to enable dialback"
            ),
            AuthRequirement::Any => format!(
                "{ours}{domain} must offer dialback (XEP-0220), or SASL EXTERNAL with a certificate of ours it trusts; ask its operator which it allows"
            ),
        }
    }

    /// Warnings about a link that works: what fedgate accepts but should not have to.
    fn warnings(&self, probe: &Probe) -> Vec<String> {
        let mut warnings = Vec::new();
        match (&probe.security.tls, &probe.security.verdict) {
            (None, _) => warnings.push(format!(
                "the stream to {} is not encrypted (tls = \"optional\"): dialback keys and stanzas cross the network in clear text",
                self.domain
            )),
            (Some(_), Some(CertVerdict::Invalid(problem))) => warnings.push(format!(
                "{problem}; fedgate federates anyway because nothing requires a valid certificate for {} (s2s.secure_auth is off). To fix it: {}",
                self.domain,
                self.certificate_fix(&probe.label, problem)
            )),
            _ => {}
        }
        if let Some((tls, _, _)) = self.tls() {
            if let Some(expiry) = Tls::peer_certificate_expiry(tls) {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let days = (expiry - now).div_euclid(86_400);
                if (0..14).contains(&days) {
                    warnings.push(format!(
                        "the certificate of {} expires in {days} days: its operator should renew it now",
                        self.domain
                    ));
                }
            }
        }
        warnings
    }
}

/// Unix seconds as `2034-01-01T00:00:00Z`.
fn rfc3339(seconds: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(seconds.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

impl fmt::Display for RemoteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (domain, local) = (&self.domain, &self.local);
        writeln!(
            f,
            "Checking federation with {domain} as {local} (config {})",
            self.file.display()
        )?;
        for note in &self.notes {
            writeln!(f, "Note: {note}")?;
        }
        match &self.policy {
            Ok(()) => writeln!(
                f,
                "\nPolicy: ok, federation with {domain} is allowed ([federation] mode = \"{}\")",
                match self.mode {
                    FederationMode::Open => "open",
                    FederationMode::Allowlist => "allowlist",
                }
            )?,
            Err(refused) => writeln!(f, "\nPolicy: FAIL {refused}; checked anyway")?,
        }
        writeln!(f, "\nSteps")?;
        for line in self.trace.to_string().lines() {
            writeln!(f, "  {line}")?;
        }
        self.write_certificate(f)?;
        match &self.result {
            Ok(probe) => {
                writeln!(f, "\nFeatures")?;
                writeln!(
                    f,
                    "  before authentication: {}",
                    describe_features(&probe.offered)
                )?;
                if probe.method == AuthMethod::External {
                    writeln!(
                        f,
                        "  after authentication:  {}",
                        describe_features(&probe.features)
                    )?;
                }
                writeln!(f, "\nAuthentication")?;
                match probe.method {
                    AuthMethod::External => writeln!(
                        f,
                        "  SASL EXTERNAL with our certificate for {local}: accepted (no dialback round trip needed)"
                    )?,
                    // XEP-0344 §2.4: a receiving server may take a valid certificate as
                    // proof and skip the connect-back.
                    AuthMethod::Dialback if self.local_certificate_valid => writeln!(
                        f,
                        "  dialback: our key for {local} was accepted; our certificate for {local} is valid, so {domain} may have taken it as proof (XEP-0344) instead of asking {local}'s authoritative server"
                    )?,
                    AuthMethod::Dialback => writeln!(
                        f,
                        "  dialback: our key for {local} was verified: {domain} asked {local}'s authoritative server (the running fedgate of this deployment), which confirmed it"
                    )?,
                }
            }
            Err(e) => {
                let (step, _) = self.failure(e);
                if step == CheckStep::Authentication {
                    writeln!(f, "\nAuthentication")?;
                    writeln!(f, "  FAIL {e}")?;
                }
            }
        }
        writeln!(f)?;
        // Our own policy is the first step: when it refuses, that is the verdict, and what
        // the connection showed comes after.
        if let Err(refused) = &self.policy {
            writeln!(f, "Verdict: FAILED at policy: {refused}")?;
            writeln!(f, "Fix: {}", self.policy_fix(refused))?;
        }
        let then = if self.policy.is_err() {
            "Then"
        } else {
            "Verdict"
        };
        match &self.result {
            Ok(probe) => {
                let over = match &probe.security.tls {
                    Some(tls) => format!("over {}", tls.version),
                    None => "without TLS".to_string(),
                };
                let method = match probe.method {
                    AuthMethod::External => "SASL EXTERNAL",
                    AuthMethod::Dialback => "dialback",
                };
                for warning in self.warnings(probe) {
                    writeln!(f, "Warning: {warning}")?;
                }
                writeln!(
                    f,
                    "{then}: OK — {domain} accepts {local} by {method} {over}"
                )?;
            }
            Err(e) => {
                let (step, fix) = self.failure(e);
                writeln!(f, "{then}: FAILED at {step}: {e}")?;
                writeln!(f, "Fix: {fix}")?;
            }
        }
        Ok(())
    }
}

impl RemoteReport {
    fn policy_fix(&self, refused: &Refused) -> String {
        let file = self.file.display();
        if refused.rule.starts_with("federation.deny") {
            format!(
                "remove the entry from federation.deny in {file} if {} should federate with us",
                self.domain
            )
        } else {
            format!(
                "add \"{}\" to federation.allow in {file} if it should federate with us",
                self.domain
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_listed_with_its_fix() {
        let problems = vec![
            crate::config::invalid(
                "s2s.max_depth",
                "the limit is zero",
                "set a positive number",
            ),
            crate::config::invalid("dns.timeout", "the timeout is zero", "set \"5s\""),
        ];
        let text = problems_text(Path::new("f.toml"), &problems);
        assert_eq!(
            text,
            "Error: f.toml: 2 problems\n  s2s.max_depth: the limit is zero\n    fix: set a positive number\n  dns.timeout: the timeout is zero\n    fix: set \"5s\"\n"
        );
    }

    #[test]
    fn exit_codes() {
        assert_eq!(
            [Exit::Ok, Exit::Failed, Exit::Usage].map(Exit::code),
            [0, 1, 64]
        );
    }
}
