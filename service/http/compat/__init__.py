"""The hosted APIs' own routes (COMPAT_APIS): Resend's and Postmark's, for their SDKs, on the same intake."""
