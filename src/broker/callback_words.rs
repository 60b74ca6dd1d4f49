//! What a callback that stored nothing says to a person: a title and a plain-text
//! detail, for the callback's page, the paste-back API's problem and the terminal's
//! paste. (The HTTP status is the HTTP layer's: `http::problem::callback_status`.)

use super::{CallbackError, IssuerProblem};

impl CallbackError {
    /// The title and the plain-text detail, for a flow of `provider`.
    pub fn words(&self, provider: &str) -> (&'static str, String) {
        use CallbackError::*;
        let start_again = "Start connecting again.";
        match self {
            UnknownProvider => (
                "Unknown provider",
                format!(
                    "no provider named {:?} is configured",
                    provider.chars().take(64).collect::<String>()
                ),
            ),
            NoState => (
                "Unknown sign-in",
                "This address carries no valid state from oauthd, so no sign-in oauthd started ends here. Start connecting again from oauthd; or, pasting an address, paste the one the browser ended on after you approved (it names code and state).".into(),
            ),
            UnknownState => (
                "Unknown sign-in",
                format!("This sign-in was already used, was started for another provider, or was never issued by oauthd. A reload of the page that said \"Connected\" (or the back button to it) shows this too: the connection made then stands, and oauthd's page lists it. Otherwise: {}", start_again.to_lowercase()),
            ),
            Storage(message) => ("Storage unavailable", message.clone()),
            NotStored(message) => ("Could not store the connection", message.clone()),
            // The vault's own words (which key to put back where) are the operator's, in
            // the log: this page is public.
            FlowUnreadable(_) => (
                "Cannot read the sign-in",
                "This sign-in's sealed data cannot be opened by this oauthd (a vault key it has not loaded, or data altered at rest); oauthd's log says which. Nothing was stored.".into(),
            ),
            ProviderUnreachable { message, .. } => ("Provider unreachable", message.clone()),
            Issuer {
                problem: IssuerProblem::Wrong,
                ..
            } => (
                "Wrong issuer",
                "The answer came from a different authorization server than the one this sign-in was started with. Nothing was stored.".into(),
            ),
            Issuer {
                problem: IssuerProblem::Missing,
                ..
            } => (
                "Missing issuer",
                "The provider promised to identify itself (iss) on every answer, and this answer did not. Nothing was stored.".into(),
            ),
            ProviderError {
                error, description, ..
            } => (
                "The provider reported an error",
                format!("{error}: {description}"),
            ),
            NoCode { .. } => (
                "No authorization code",
                "The provider's answer carried neither a code nor an error.".into(),
            ),
            // Starting again cannot help until the operator fixes the config.
            ClientRefused { code, description } => (
                "The provider refused oauthd's client credentials",
                format!(
                    "{provider} answered {code} ({description}): the client_id or client_secret (client_secret_file) configured for provider {provider} is wrong. Fix it in oauthd's config, restart oauthd, then connect again; `oauthd check` tells when it is right."
                ),
            ),
            ExchangeFailed { message, .. } => {
                ("The provider did not hand out tokens", message.clone())
            }
            IdToken { message, .. } => (
                "The provider's ID token did not verify",
                format!("{message}. Nothing was stored."),
            ),
            Expired { account } => (
                "This sign-in expired",
                format!("Connecting {provider} ({account}) took longer than oauthd keeps a sign-in open, so nothing was stored. {start_again}"),
            ),
            Denied { description, .. } => (
                "Access was declined",
                if description.is_empty() {
                    format!("{provider} reported that access was not granted. Nothing was stored.")
                } else {
                    format!("{provider} reported that access was not granted ({description}). Nothing was stored.")
                },
            ),
            PasteUnreadable => (
                "Not an address",
                "Paste the whole address from the browser's address bar, as it is (it starts with http://, and names each of code and state once).".into(),
            ),
            ByApp(inner) => match **inner {
                NoState | UnknownState => (
                    "Unknown sign-in",
                    "This sign-in link was already used, has expired, or was never issued by oauthd. Go back to the app and start again there.".into(),
                ),
                _ => inner.words(provider),
            },
            NotSignedIn { .. } => (
                "Sign in to oauthd to finish",
                "This sign-in was started on oauthd's page, and only a browser signed in to oauthd finishes it; this one is not, so nothing was stored. If you started it, sign in to oauthd in this browser (the command oauthd admin link prints a sign-in link) and open this address again within a few minutes: the sign-in is still open. If you did not, close this page.".into(),
            ),
            PasteOnly { redirect_uri } => (
                "Paste the address instead",
                format!("Sign-ins at {provider} come back to {redirect_uri}, not to this address: paste the address the browser shows there on oauthd's page (or into the command oauthd connect --paste). Nothing was changed."),
            ),
            AppFlowPasted { .. } => (
                "An app's sign-in",
                "This address belongs to a sign-in an app started: only the browser that confirmed it on oauthd's page can finish it. Paste only addresses of sign-ins started here.".into(),
            ),
            StarterRevoked { .. } => (
                "The app's API key was revoked",
                "An app started this sign-in with an oauthd API key that has been revoked since, so it goes no further and nothing was stored. If you trust the app, ask its operator for a new key and start again from the app.".into(),
            ),
            TooManyConnections { held, max, .. } => (
                "The app has no room for another account",
                format!("The app's oauthd API key already has {held} connections, the most it may have ({max}), so nothing was stored. Disconnect an account in the app, or ask oauthd's operator to raise limits.max_connections_per_key, then start again from the app."),
            ),
            NotConfirmedHere { .. } => (
                "Not confirmed in this browser",
                format!("An app started this sign-in, and it was not confirmed on oauthd's page in this browser, so nothing was stored. If you started it yourself, go back to the app and start again, and stay in one browser until {provider} sends you back. Open the app's link as it was given: confirmed at another address of oauthd's (localhost for 127.0.0.1, another host name), the browser keeps the confirmation for that address, not this one."),
            ),
            PasteOtherFlow => (
                "Another sign-in's address",
                "This address ends another sign-in than the one this command printed (one used already, another terminal's, an older one): nothing was changed by it, and one still open stays open where it was started. Paste the address the browser ended on after opening the link printed above.".into(),
            ),
            PasteElsewhere { expected } => (
                "Not the address oauthd waits for",
                format!("The pasted address is not {expected}, the redirect URI registered for {provider}: paste the address of the page the provider sent you to after you approved."),
            ),
        }
    }
}
