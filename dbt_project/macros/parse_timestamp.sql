{#- Raw text -> TIMESTAMP (UTC, no zone), or null when it cannot be read.
    Accepts Unix epoch seconds (optionally fractional, as MovieLens and most logs write
    them) and ISO-8601 text with or without an offset; the profile runs in UTC. -#}
{% macro parse_timestamp(raw) -%}
    case
        when regexp_full_match(trim({{ raw }}), '-?[0-9]{1,11}(\.[0-9]+)?')
            then make_timestamp(cast(cast(trim({{ raw }}) as double) * 1000000 as bigint))
        else try_cast(trim({{ raw }}) as timestamptz) at time zone 'UTC'
    end
{%- endmacro %}
