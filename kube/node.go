package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// NetworkReadyReason is the reason weft sets on the NetworkUnavailable
// condition.
const NetworkReadyReason = "WeftIsUp"

// SetNetworkAvailable sets this Node's condition NetworkUnavailable=False.
// Some clouds' node controllers set it True on new Nodes and the scheduler
// keeps pods off such Nodes until the network plugin clears it. The patch is
// a strategic merge on status.conditions keyed by type, so the other
// conditions kubelet owns are left alone.
func (c *Cluster) SetNetworkAvailable(ctx context.Context) error {
	now := metav1.NewTime(time.Now())
	patch, err := json.Marshal(map[string]any{
		"status": map[string]any{
			"conditions": []corev1.NodeCondition{{
				Type:               corev1.NodeNetworkUnavailable,
				Status:             corev1.ConditionFalse,
				Reason:             NetworkReadyReason,
				Message:            "weft is running on this node",
				LastTransitionTime: now,
				LastHeartbeatTime:  now,
			}},
		},
	})
	if err != nil {
		return fmt.Errorf("kube: encode Node condition patch: %w", err)
	}
	if _, err := c.client.Nodes().Patch(ctx, c.nodeName, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		return fmt.Errorf("kube: set NetworkUnavailable=False on Node %s: %w", c.nodeName, err)
	}
	return nil
}
