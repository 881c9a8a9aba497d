package fcapi

// RateLimiter limits a device's I/O with two token buckets; a nil bucket is no limit (or, in a
// PATCH, leaves that limit unchanged).
type RateLimiter struct {
	// Bandwidth counts bytes.
	Bandwidth *TokenBucket `json:"bandwidth,omitempty"`
	// Ops counts operations.
	Ops *TokenBucket `json:"ops,omitempty"`
}

// TokenBucket refills Size tokens every RefillTime milliseconds and starts full. A bucket with
// Size or RefillTime 0 is disabled, which in a PATCH removes that limit.
type TokenBucket struct {
	Size int64 `json:"size"`
	// RefillTime is in milliseconds.
	RefillTime int64 `json:"refill_time"`
	// OneTimeBurst is an extra initial allowance, spent first and never refilled.
	OneTimeBurst int64 `json:"one_time_burst,omitempty"`
}
