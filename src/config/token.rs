//! The join token, as tbot takes it from `onboarding.token`, `--token` or `$TELEPORT_BOT_TOKEN`:
//! the token's name, or an absolute path to a file holding it.
//!
//! tbot keeps the value as given and reads it each time it joins (`Config.Token()` in
//! `lib/tbot/bot/onboarding/config.go`, through `utils.TryReadValueAsFile`: an absolute path is
//! read and trimmed, anything else is the name), whichever of the three it came from; so does
//! keybound. The configuration keeps the value as given, so that what keybound prints of a token
//! held in a file is the file's path, never its contents.

use std::path::Path;

use zeroize::Zeroizing;

/// Whether `configured` names a file holding the token (an absolute path, as tbot decides)
/// rather than the token itself.
pub fn is_file(configured: &str) -> bool {
    Path::new(configured).is_absolute()
}

/// How messages name the token: `token "NAME"`, or `the token in FILE` (never the file's
/// contents).
pub fn describe(configured: &str) -> String {
    if is_file(configured) {
        format!("the token in {configured}")
    } else {
        format!("token {configured:?}")
    }
}

/// The token's name: `configured` itself, or the trimmed contents of the file it names. The
/// error names the file and what to do, never its contents.
pub fn read(configured: &str) -> Result<String, String> {
    if !is_file(configured) {
        return Ok(configured.to_owned());
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(configured)
            .map_err(|e| format!("cannot read the token file {configured}: {e}"))?,
    );
    let name = text.trim();
    if name.is_empty() {
        return Err(format!(
            "the token file {configured} is empty; write the bound_keypair token's name into it"
        ));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_itself_and_a_path_is_its_file() {
        assert_eq!(read("bot-token").unwrap(), "bot-token");
        assert_eq!(describe("bot-token"), "token \"bot-token\"");
        // A relative path is a name, as in tbot: only an absolute path is read.
        assert_eq!(read("secrets/token").unwrap(), "secrets/token");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  from-a-file\n").unwrap();
        let path = file.display().to_string();
        assert_eq!(read(&path).unwrap(), "from-a-file");
        assert_eq!(describe(&path), format!("the token in {path}"));

        std::fs::write(&file, "\n").unwrap();
        assert!(
            read(&path)
                .unwrap_err()
                .ends_with("is empty; write the bound_keypair token's name into it")
        );
        let missing = dir.path().join("missing").display().to_string();
        assert!(
            read(&missing)
                .unwrap_err()
                .starts_with(&format!("cannot read the token file {missing}: "))
        );
    }
}
