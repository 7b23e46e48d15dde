package bench

import "time"

func durationOf(ns float64) time.Duration { return time.Duration(ns) }
