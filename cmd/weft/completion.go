package main

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"
)

// The shell scripts ask the weft binary itself for the words that fit
// (urfave/cli's --generate-bash-completion), so they never go stale when a
// command or a flag is added.
const bashCompletion = `# weft completion for bash: source <(weft completion bash)
_weft_complete() {
  local cur="${COMP_WORDS[COMP_CWORD]}" opts
  if [[ "$cur" == -* ]]; then
    opts=$("${COMP_WORDS[0]}" "${COMP_WORDS[@]:1:COMP_CWORD-1}" "$cur" --generate-bash-completion 2>/dev/null)
  else
    opts=$("${COMP_WORDS[0]}" "${COMP_WORDS[@]:1:COMP_CWORD-1}" --generate-bash-completion 2>/dev/null)
  fi
  COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}
complete -o bashdefault -o default -F _weft_complete weft
`

// zshCompletion passes the words before the cursor (words[2,CURRENT-1]:
// zsh arrays count from 1, and $CURRENT is the word being completed) and,
// for a flag, the word itself.
const zshCompletion = `#compdef weft
# weft completion for zsh: source <(weft completion zsh), or save as _weft in $fpath
_weft() {
  local -a opts before
  local cur=${words[CURRENT]}
  before=("${(@)words[2,CURRENT-1]}")
  if [[ "$cur" == -* ]]; then
    opts=("${(@f)$(${words[1]} "${(@)before}" "$cur" --generate-bash-completion 2>/dev/null)}")
  else
    opts=("${(@f)$(${words[1]} "${(@)before}" --generate-bash-completion 2>/dev/null)}")
  fi
  if [[ "${opts[1]}" != "" ]]; then
    _describe 'values' opts
  else
    _files
  fi
}
if [[ "$(basename -- ${(%):-%x})" != "_weft" ]]; then
  compdef _weft weft
fi
`

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script: bash, zsh or fish",
		ArgsUsage: "bash|zsh|fish",
		Description: "bash:  source <(weft completion bash)   (or save it in /etc/bash_completion.d/weft)\n" +
			"zsh:   source <(weft completion zsh)\n" +
			"fish:  weft completion fish > ~/.config/fish/completions/weft.fish",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef(c, "name one shell: bash, zsh or fish")
			}
			switch sh := c.Args().First(); sh {
			case "bash":
				_, _ = io.WriteString(c.App.Writer, bashCompletion)
			case "zsh":
				_, _ = io.WriteString(c.App.Writer, zshCompletion)
			case "fish":
				// Generated from the command tree, flags and all.
				s, err := newApp().ToFishCompletion()
				if err != nil {
					return fmt.Errorf("fish completion: %w", err)
				}
				fmt.Fprint(c.App.Writer, s)
			default:
				if near := nearest(sh, []string{"bash", "zsh", "fish"}); near != "" {
					return usagef(c, "unknown shell %q; did you mean %q?", sh, near)
				}
				return usagef(c, "unknown shell %q; want bash, zsh or fish", sh)
			}
			return nil
		},
	}
}
