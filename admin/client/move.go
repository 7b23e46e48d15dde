package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/tandem-project/tandem/admin"
)

// MoveVolume starts a move of one of a volume's replicas (POST
// /v1/volumes/{name}/move) and returns the volume with its move. The API
// answers 400 when the source holds no replica or the destination holds
// one or is not alive, 404 for an unknown volume or host, 409 when the
// volume is moving already.
func (c *Client) MoveVolume(ctx context.Context, name string, req admin.MoveVolume) (admin.Volume, error) {
	var out admin.Volume
	if err := c.do(ctx, http.MethodPost, volumePath(name)+"/move", nil, req, &out); err != nil {
		return admin.Volume{}, fmt.Errorf("move a replica of volume %q: %w", name, err)
	}
	return out, nil
}

// CancelMove cancels a volume's replica move (POST
// /v1/volumes/{name}/move/cancel): the destination leaves the volume's
// group again. The API answers 409 when the volume is not moving or its
// source is leaving already.
func (c *Client) CancelMove(ctx context.Context, name string) (admin.Volume, error) {
	var out admin.Volume
	if err := c.do(ctx, http.MethodPost, volumePath(name)+"/move/cancel", nil, nil, &out); err != nil {
		return admin.Volume{}, fmt.Errorf("cancel the move of volume %q: %w", name, err)
	}
	return out, nil
}

// MoveStep records a step of a replica move in the catalog (POST
// /v1/internal/move, an agent's request) and returns its index.
func (c *Client) MoveStep(ctx context.Context, step admin.MoveStep) (uint64, error) {
	var out admin.Committed
	if err := c.do(ctx, http.MethodPost, "/v1/internal/move", nil, step, &out); err != nil {
		return 0, fmt.Errorf("move step %s of volume %q: %w", step.Kind, step.Volume, err)
	}
	return out.Index, nil
}

// LocalChecksums asks the agent for its replica's checksums of a volume's
// ranges (see admin.ChecksumQuery; GET /v1/local/volumes/{name}/checksums,
// an agent's request).
func (c *Client) LocalChecksums(ctx context.Context, name string, cq admin.ChecksumQuery) (admin.Checksums, error) {
	q := url.Values{"index": {strconv.FormatUint(cq.Index, 10)}, "first": {strconv.FormatInt(cq.First, 10)}, "count": {strconv.FormatInt(cq.Count, 10)}}
	if cq.Pinned != 0 {
		q.Set("pinned", strconv.FormatUint(cq.Pinned, 10))
	}
	var out admin.Checksums
	if err := c.do(ctx, http.MethodGet, "/v1/local/volumes/"+url.PathEscape(name)+"/checksums", q, nil, &out); err != nil {
		return admin.Checksums{}, fmt.Errorf("checksums of volume %q: %w", name, err)
	}
	return out, nil
}
