package bench

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"strings"
)

// SVG renders the report as a horizontal bar chart: for each workload one
// bar per system, the median of the headline figure (IOPS, or bandwidth
// for large blocks) with a line from the lowest to the highest round.
// Each workload has its own scale (its highest round spans the width), so
// the chart compares systems within a workload, not workloads.
func (r *Report) SVG() string {
	const (
		width   = 1000
		labelW  = 140
		barW    = 500
		rowH    = 20
		headH   = 24
		gapH    = 10
		topH    = 70
		bottomH = 20
	)
	colors := []string{"#1f77b4", "#7f7f7f", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"}
	color := map[string]string{}
	legend := []string{}
	for i, s := range r.Systems {
		c := colors[i%len(colors)]
		if s.Role == RoleTandem {
			c = "#d62728"
		}
		color[s.Name] = c
		legend = append(legend, s.Name)
	}
	height := topH + bottomH
	for _, w := range r.Workloads {
		height += headH + rowH*len(w.Systems) + gapH
	}

	var b bytes.Buffer
	esc := func(s string) string {
		var e bytes.Buffer
		_ = xml.EscapeText(&e, []byte(s))
		return e.String()
	}
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="#ffffff"/>`+"\n", width, height)
	fmt.Fprintf(&b, `<text x="10" y="22" font-size="16" font-weight="bold">%s</text>`+"\n",
		esc(fmt.Sprintf("Tandem benchmark, %s, %s", r.Started.UTC().Format("2006-01-02 15:04 MST"), r.ClientVersion)))
	fmt.Fprintf(&b, `<text x="10" y="40" fill="#555555">%s</text>`+"\n",
		esc(fmt.Sprintf("median of %d round(s) of %v; line: lowest to highest round; each workload scaled to its highest round; longer is better", r.Repeat, r.Runtime)))
	x := 10
	for _, name := range legend {
		fmt.Fprintf(&b, `<rect x="%d" y="50" width="12" height="12" fill="%s"/><text x="%d" y="60">%s</text>`+"\n", x, color[name], x+16, esc(name))
		x += 30 + 8*len(name)
	}
	y := topH
	for _, w := range r.Workloads {
		fmt.Fprintf(&b, `<text x="10" y="%d" font-weight="bold">%s</text>`+"\n", y+16, esc(w.Workload.Name))
		y += headH
		best := 0.0
		for _, s := range w.Systems {
			best = max(best, s.IOPS.Max)
		}
		for _, s := range w.Systems {
			fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", labelW-10, y+14, esc(s.System))
			if s.IOPS.N == 0 || best <= 0 {
				fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#d62728">failed</text>`+"\n", labelW, y+14)
				y += rowH
				continue
			}
			scale := func(v float64) float64 { return float64(labelW) + v/best*barW }
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n",
				labelW, y+3, scale(s.IOPS.Median)-labelW, rowH-6, color[s.System])
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#000000" stroke-width="1.5"/>`+"\n",
				scale(s.IOPS.Min), scale(s.IOPS.Max), y+rowH/2, y+rowH/2)
			label := fmtIOPS(s.IOPS.Median)
			if w.Workload.Throughput() {
				label = fmtBW(s.BytesPerSec.Median)
			}
			var ratios []string
			for _, q := range w.Ratios {
				if q.Metric == "iops" && q.Median.Valid() && s.System == r.Systems[0].Name {
					ratios = append(ratios, fmt.Sprintf("%.2f× %s", float64(q.Median), q.Baseline))
				}
			}
			if len(ratios) > 0 {
				label += " (" + strings.Join(ratios, ", ") + ")"
			}
			fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", labelW+barW+8, y+14, esc(label))
			y += rowH
		}
		y += gapH
	}
	b.WriteString("</svg>\n")
	return b.String()
}
