package client

import (
	"context"
	"fmt"
	"net/http"

	"github.com/tandem-project/tandem/admin"
)

// VerifyVolume asks for a verification of a volume's replicas (POST
// /v1/volumes/{name}/verify) and returns the volume with it. The API
// answers 400 when a verification is running already or the volume has
// one replica, 404 for an unknown volume.
func (c *Client) VerifyVolume(ctx context.Context, name string, req admin.VerifyVolume) (admin.Volume, error) {
	var out admin.Volume
	if err := c.do(ctx, http.MethodPost, volumePath(name)+"/verify", nil, req, &out); err != nil {
		return admin.Volume{}, fmt.Errorf("verify volume %q: %w", name, err)
	}
	return out, nil
}

// CancelVerify cancels a volume's verification (POST
// /v1/volumes/{name}/verify/cancel). The API answers 409 when none runs.
func (c *Client) CancelVerify(ctx context.Context, name string) (admin.Volume, error) {
	var out admin.Volume
	if err := c.do(ctx, http.MethodPost, volumePath(name)+"/verify/cancel", nil, nil, &out); err != nil {
		return admin.Volume{}, fmt.Errorf("cancel the verification of volume %q: %w", name, err)
	}
	return out, nil
}

// VerifyStep records how a verification ended (POST /v1/internal/verify,
// an agent's request to the control leader) and returns its catalog index.
func (c *Client) VerifyStep(ctx context.Context, step admin.VerifyStep) (uint64, error) {
	var out admin.Committed
	if err := c.do(ctx, http.MethodPost, "/v1/internal/verify", nil, step, &out); err != nil {
		return 0, fmt.Errorf("verification %d of volume %q: %w", step.Verify.ID, step.Volume, err)
	}
	return out.Index, nil
}
