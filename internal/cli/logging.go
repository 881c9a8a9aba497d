package cli

import (
	"log/slog"
)

// setupLogging builds smartvm's logger from --log-level and --log-format. It writes to
// stderr; the library packages get it through their options.
func (a *app) setupLogging() error {
	var level slog.Level
	switch a.logLevel {
	case "debug":
		level = slog.LevelDebug
	case "info":
		level = slog.LevelInfo
	case "warn", "warning":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	default:
		return usagef("invalid --log-level %q: want debug, info, warn or error", a.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch a.logFormat {
	case "text":
		a.log = slog.New(slog.NewTextHandler(a.stderr, opts))
	case "json":
		a.log = slog.New(slog.NewJSONHandler(a.stderr, opts))
	default:
		return usagef("invalid --log-format %q: want text or json", a.logFormat)
	}
	return nil
}
