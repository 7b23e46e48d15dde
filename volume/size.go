package volume

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
)

var sizeRE = regexp.MustCompile(`^([0-9]+)(?:\s*([kKmMgGtTpP])(i?[bB])?|\s*[bB])?$`)

// ParseSize parses a byte count such as "1073741824", "1G", "1GiB",
// "512MiB" or "64k". Suffixes are binary (K = 1024) with or without "iB";
// a bare number or "B" is bytes.
func ParseSize(s string) (int64, error) {
	m := sizeRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, fmt.Errorf("invalid size %q: want a number of bytes with an optional K, M, G, T or P suffix (e.g. 1G, 512MiB)", s)
	}
	n, err := strconv.ParseUint(m[1], 10, 63)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q: %w", s, err)
	}
	shift := 0
	if m[2] != "" {
		shift = 10 * (1 + strings.IndexByte("kmgtp", strings.ToLower(m[2])[0]))
	}
	if n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return int64(n << shift), nil
}

// FormatSize renders n bytes with the largest binary unit that divides it
// exactly ("1GiB", "1536KiB", "1000B").
func FormatSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	i := 0
	for n != 0 && n%1024 == 0 && i < len(units)-1 {
		n /= 1024
		i++
	}
	return strconv.FormatInt(n, 10) + units[i]
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidateName checks a volume name: 1 to 63 characters of lowercase
// letters, digits, '.', '_' and '-', starting with a letter or digit.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid volume name %q: use 1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}
