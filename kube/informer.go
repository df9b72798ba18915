package kube

import (
	"context"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// newInformer is a shared informer on one resource of client, listing and
// watching through it (what client-go's informer factory builds, without
// the factory, which links an informer for every API group).
func newInformer[T, L runtime.Object](client Client, r Resource[T, L], example T) cache.SharedIndexInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return r.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return r.Watch(ctx, o)
		},
	}
	// client may say it cannot stream watch lists (a fake clientset).
	return cache.NewSharedIndexInformer(cache.ToListWatcherWithWatchListSemantics(lw, client), example, 0,
		cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
}

// informers runs informers until ctx is done; wait returns once they all
// have stopped.
type informers struct{ wg sync.WaitGroup }

func (g *informers) start(ctx context.Context, infs ...cache.SharedIndexInformer) {
	for _, inf := range infs {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			inf.RunWithContext(ctx)
		}()
	}
}

func (g *informers) wait() { g.wg.Wait() }
