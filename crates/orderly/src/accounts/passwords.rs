//! Argon2id password hashing, always on the blocking pool: a hash takes tens of milliseconds
//! of CPU and must never stall the async workers serving other requests. At most one hash
//! per CPU runs at a time: each needs 19 MiB, and more at once only queue for the CPUs anyway.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};

use crate::error::AppError;

use super::domain::Password;

/// Bounds concurrent hashes to the number of CPUs.
fn permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())))
}

pub async fn hash(password: Password) -> Result<String, AppError> {
    let _permit = permits().acquire().await.map_err(|_| AppError::internal("password hashing is closed"))?;
    tokio::task::spawn_blocking(move || hash_blocking(password.expose()))
        .await
        .map_err(|error| AppError::internal(format!("password hashing task failed: {error}")))
}

/// Verifies `password` against `stored`; with no stored hash (unknown user) it verifies
/// against a dummy hash anyway, so response time does not reveal which emails exist.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool, AppError> {
    let _permit = permits().acquire().await.map_err(|_| AppError::internal("password hashing is closed"))?;
    tokio::task::spawn_blocking(move || {
        let matched = verify_blocking(&password, stored.as_deref().unwrap_or_else(|| dummy_hash()));
        matched && stored.is_some()
    })
    .await
    .map_err(|error| AppError::internal(format!("password verification task failed: {error}")))
}

pub fn hash_blocking(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("Argon2id hashing with default parameters succeeds")
        .to_string()
}

fn verify_blocking(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_blocking("dummy password for timing equalisation"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_only_its_own_password() {
        let stored = hash_blocking("correct horse");
        assert!(stored.starts_with("$argon2id$"));
        assert!(verify_blocking("correct horse", &stored));
        assert!(!verify_blocking("wrong horse", &stored));
        assert!(!verify_blocking("correct horse", "not a hash"));
    }
}
