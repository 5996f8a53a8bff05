//! Who is calling: the credentials of a request, checked without IO. The
//! caller supplies the request parts and a way to look keys up.

pub mod sdk_hmac;
