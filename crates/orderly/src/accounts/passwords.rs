//! Argon2id password hashing on a small pool of dedicated threads.
//!
//! A hash takes tens of milliseconds of CPU and 19 MiB of memory, so it never runs on the async
//! workers. Each hashing thread keeps one Argon2 memory buffer and reuses it for every hash
//! (releasing it after a few idle seconds): memory stays at most threads × 19 MiB instead of
//! growing with concurrent logins, and the
//! number of threads (`ORDERLY_PASSWORD_HASHERS`, default 1) bounds how much CPU login floods
//! can take from request serving.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use super::domain::Password;

type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

static THREADS: AtomicUsize = AtomicUsize::new(1);
static POOL: OnceLock<Sender<Job>> = OnceLock::new();

/// Sets the number of hashing threads; takes effect if called before the first hash.
pub fn configure(threads: usize) {
    THREADS.store(threads.max(1), Ordering::Relaxed);
}

fn pool() -> &'static Sender<Job> {
    POOL.get_or_init(|| {
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..THREADS.load(Ordering::Relaxed) {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("password-hasher-{index}"))
                .spawn(move || work(&queue))
                .expect("a password hashing thread starts");
        }
        jobs
    })
}

/// Runs jobs; the buffer is released after a quiet spell so an idle server does not hold it.
fn work(queue: &Mutex<Receiver<Job>>) {
    let mut memory = Vec::new();
    loop {
        let job = queue.lock().map(|queue| queue.recv_timeout(IDLE_RELEASE));
        match job {
            Ok(Ok(job)) => job(&mut memory),
            Ok(Err(RecvTimeoutError::Timeout)) => memory = Vec::new(),
            _ => return,
        }
    }
}

/// How long a hashing thread keeps its 19 MiB buffer without work.
const IDLE_RELEASE: std::time::Duration = std::time::Duration::from_secs(5);

/// A hashing thread could not take or finish a job: a broken process, never the caller's doing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HashingFailed(&'static str);

/// Runs `task` on a hashing thread with that thread's Argon2 memory.
async fn on_hasher<T: Send + 'static>(
    task: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
) -> Result<T, HashingFailed> {
    let (reply, result) = tokio::sync::oneshot::channel();
    pool()
        .send(Box::new(move |memory| {
            let _ = reply.send(task(memory));
        }))
        .map_err(|_| HashingFailed("the password hashing threads are gone"))?;
    result.await.map_err(|_| HashingFailed("a password hashing thread failed"))
}

pub async fn hash(password: Password) -> Result<String, HashingFailed> {
    on_hasher(move |memory| hash_with(memory, password.expose())).await
}

/// Verifies `password` against `stored`; with no stored hash (unknown user) it verifies
/// against a dummy hash anyway, so response time does not reveal which emails exist.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool, HashingFailed> {
    on_hasher(move |memory| match stored {
        Some(stored) => verify_with(memory, &password, &stored),
        None => {
            static DUMMY: OnceLock<String> = OnceLock::new();
            let dummy = DUMMY.get_or_init(|| hash_with(memory, "dummy password for timing equalisation"));
            verify_with(memory, &password, dummy);
            false
        }
    })
    .await
}

/// An Argon2id PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) with default parameters.
fn hash_with(memory: &mut Vec<Block>, password: &str) -> String {
    let params = Params::default();
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buffer = [0u8; 64];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_buffer).expect("a generated salt decodes");
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let blocks = blocks(memory, params.block_count());
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut out, blocks)
        .expect("Argon2id with default parameters hashes any password of up to 128 characters");
    let out = Output::new(&out).expect("32 bytes is a valid output length");
    format!("$argon2id$v=19$m={},t={},p={}${}${out}", params.m_cost(), params.t_cost(), params.p_cost(), salt.as_str())
}

/// Checks `password` against an Argon2id PHC string, with the parameters stored in it.
fn verify_with(memory: &mut Vec<Block>, password: &str, stored: &str) -> bool {
    let Ok(hash) = PasswordHash::new(stored) else { return false };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else { return false };
    let Ok(params) = Params::try_from(&hash) else { return false };
    let version = hash.version.map_or(Ok(Version::V0x13), Version::try_from);
    let (Ok(algorithm), Ok(version)) = (Algorithm::try_from(hash.algorithm), version) else { return false };
    let mut salt_buffer = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_buffer) else { return false };
    let mut out = vec![0u8; expected.len()];
    let blocks = blocks(memory, params.block_count());
    let hashed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password.as_bytes(),
        salt_bytes,
        &mut out,
        blocks,
    );
    // `Output` compares in constant time.
    hashed.is_ok() && Output::new(&out).is_ok_and(|out| out == expected)
}

/// The first `count` blocks of the thread's buffer, growing it the first time.
fn blocks(memory: &mut Vec<Block>, count: usize) -> &mut [Block] {
    if memory.len() < count {
        memory.resize(count, Block::default());
    }
    &mut memory[..count]
}

/// Hashes on the calling thread with a fresh buffer.
#[cfg(test)]
fn hash_blocking(password: &str) -> String {
    hash_with(&mut Vec::new(), password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_only_its_own_password() {
        let mut memory = Vec::new();
        let stored = hash_with(&mut memory, "correct horse");
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_with(&mut memory, "correct horse", &stored));
        assert!(!verify_with(&mut memory, "wrong horse", &stored));
        assert!(!verify_with(&mut memory, "correct horse", "not a hash"));
    }

    #[test]
    fn hashes_are_standard_phc_strings() {
        use argon2::PasswordVerifier;
        let stored = hash_blocking("interoperable");
        let parsed = PasswordHash::new(&stored).unwrap();
        assert!(
            Argon2::default().verify_password(b"interoperable", &parsed).is_ok(),
            "the reference verifier accepts it"
        );
        let reference = {
            use argon2::PasswordHasher;
            Argon2::default().hash_password(b"interoperable", &SaltString::generate(&mut OsRng)).unwrap().to_string()
        };
        assert!(verify_with(&mut Vec::new(), "interoperable", &reference), "and we accept the reference's hashes");
    }

    #[tokio::test]
    async fn the_pool_hashes_and_verifies() {
        let stored = hash(Password::parse("pooled password").unwrap()).await.unwrap();
        assert!(verify("pooled password".into(), Some(stored.clone())).await.unwrap());
        assert!(!verify("other password".into(), Some(stored)).await.unwrap());
        assert!(!verify("pooled password".into(), None).await.unwrap());
    }
}
