//! `reseed()` for Node.js: reseeds the OpenSSL DRBG of the process that
//! loads this module.
//!
//! Why it exists: a Node.js process started before a snapshot holds OpenSSL's
//! DRBG state in its memory, so every fork of the snapshot would draw the
//! same `crypto.randomBytes`, keys and nonces. OpenSSL reseeds on its own
//! when its process id changes (fork detection), but a VM fork keeps the pid;
//! and Node has no JavaScript call that reaches `RAND_add`. This module calls
//! it: 48 bytes from `getrandom` (the kernel CRNG, which the agent has just
//! reseeded with the host's randomness) as additional input, which makes the
//! primary DRBG reseed from the kernel, and every per-thread DRBG reseed from
//! it at its next use.
//!
//! Everything is found at run time with `dlsym` in the process's global
//! scope: the N-API functions (exported by the `node` executable) and
//! `RAND_add` (from the libcrypto Debian's node links, or from a node with
//! OpenSSL built in, which exports it), so the module links nothing but libc.
//! It is FFI through and through; each unsafe block says why it is sound.

use std::ffi::{CStr, c_char, c_int, c_void};

type Env = *mut c_void;
type Value = *mut c_void;
type CallbackInfo = *mut c_void;
type Status = c_int;
type Callback = unsafe extern "C" fn(Env, CallbackInfo) -> Value;
type CreateFunction =
    unsafe extern "C" fn(Env, *const c_char, usize, Callback, *mut c_void, *mut Value) -> Status;
type SetNamedProperty = unsafe extern "C" fn(Env, Value, *const c_char, Value) -> Status;
type ThrowError = unsafe extern "C" fn(Env, *const c_char, *const c_char) -> Status;
type RandAdd = unsafe extern "C" fn(*const c_void, c_int, f64);

/// Looks `name` up in the process's global scope.
fn symbol(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym only reads the NUL-terminated name; RTLD_DEFAULT is a
    // valid pseudo-handle.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// Throws a JavaScript Error with `message` (if N-API can be reached).
fn throw(env: Env, message: &CStr) {
    if let Some(p) = symbol(c"napi_throw_error") {
        // SAFETY: `p` is napi_throw_error, whose C signature ThrowError is;
        // the strings are NUL-terminated and outlive the call.
        let throw_error = unsafe { std::mem::transmute::<*mut c_void, ThrowError>(p) };
        // SAFETY: as above; a null code is allowed.
        unsafe { throw_error(env, std::ptr::null(), message.as_ptr()) };
    }
}

/// `reseed()`: mixes 48 fresh kernel bytes into OpenSSL's primary DRBG.
unsafe extern "C" fn reseed(env: Env, _info: CallbackInfo) -> Value {
    let Some(p) = symbol(c"RAND_add") else {
        throw(env, c"OpenSSL's RAND_add is not in this process");
        return std::ptr::null_mut();
    };
    let mut seed = [0u8; 48];
    // SAFETY: getrandom writes at most `seed.len()` bytes into `seed`.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if n != seed.len() as isize {
        throw(env, c"getrandom failed");
        return std::ptr::null_mut();
    }
    // SAFETY: `p` is RAND_add, whose C signature RandAdd is.
    let rand_add = unsafe { std::mem::transmute::<*mut c_void, RandAdd>(p) };
    // SAFETY: RAND_add reads `seed.len()` bytes from `seed`, which lives
    // through the call; the randomness estimate is in bytes.
    unsafe { rand_add(seed.as_ptr().cast(), seed.len() as c_int, seed.len() as f64) };
    // A null napi_value is `undefined`.
    std::ptr::null_mut()
}

/// Node's entry point for an N-API module: adds `reseed` to `exports`.
///
/// # Safety
/// Called by Node.js with a live environment and exports object.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn napi_register_module_v1(env: Env, exports: Value) -> Value {
    let (Some(create), Some(set)) = (
        symbol(c"napi_create_function"),
        symbol(c"napi_set_named_property"),
    ) else {
        return exports;
    };
    // SAFETY: the two symbols are the N-API functions of these signatures.
    let (create, set) = unsafe {
        (
            std::mem::transmute::<*mut c_void, CreateFunction>(create),
            std::mem::transmute::<*mut c_void, SetNamedProperty>(set),
        )
    };
    let name = c"reseed";
    let mut function: Value = std::ptr::null_mut();
    // SAFETY: `env` is live (Node calls this with it); `name` is
    // NUL-terminated (N-API takes its length or NAPI_AUTO_LENGTH); `function`
    // is written by the call.
    let created = unsafe {
        create(
            env,
            name.as_ptr(),
            name.to_bytes().len(),
            reseed,
            std::ptr::null_mut(),
            &mut function,
        )
    };
    if created == 0 {
        // SAFETY: `exports` and `function` are live values of this call's scope.
        unsafe { set(env, exports, name.as_ptr(), function) };
    }
    exports
}
